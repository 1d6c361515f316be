"""Refuse, at the call, a job function that no RQ worker can import.

RQ stores a function as its dotted path (``module.qualname``) and the worker imports it
by that path. A lambda (``<lambda>``) or a function defined inside another function
(``outer.<locals>.inner``) has no importable path: RQ accepts it at enqueue and fails it
only in the worker, after dedupkit has admitted it and let it hold the key. So such a
function is refused before anything is written.

A dotted path given as a string is left as RQ reads it: the calling process may rightly
not have the worker's code (a web app enqueueing ``"workers.tasks.process"``), so it is
not imported here.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from .errors import InvalidRequestError


def check_importable(func: Any) -> None:
    """Raise InvalidRequestError when ``func`` is a lambda or a nested function (or a
    method of a class defined inside a function), which a worker could not import."""
    if isinstance(func, str):
        return
    target = func.func if isinstance(func, functools.partial) else func
    if inspect.ismethod(target):
        target = target.__func__
    if not inspect.isfunction(target):
        return  # builtins, classes and callable instances: RQ pickles or names them itself
    qualname = target.__qualname__
    where = f"{target.__module__}.{qualname}"
    if "<lambda>" in qualname:
        raise InvalidRequestError(
            f"func is a lambda ({where}): an RQ worker imports the job's function by its dotted path, and a "
            "lambda has none. Define it with def at module level (or pass its dotted path as a string)")
    if "<locals>" in qualname:
        raise InvalidRequestError(
            f"func {where} is defined inside a function: an RQ worker imports the job's function by its dotted "
            "path and cannot reach it. Move it to module level (or pass its dotted path as a string)")

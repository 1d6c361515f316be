"""Dedup keys: their canonical text, their injective encoding, and the job ids made from them.

Pure functions, no Redis: ``keys`` names the Redis keys, this module encodes the dedup keys.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import TypeAlias

from .errors import InvalidKeyError, InvalidRequestError

Key: TypeAlias = str | int
"""A dedup key: a non-empty str (at most 512 UTF-8 bytes) or an int; 123 == "123"."""

MAX_KEY_BYTES = 512
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]+")
_ENCODED_RE = re.compile(r"(?:[A-Za-z0-9]|-[0-9a-f]{2})+")


def normalize_key(key: object) -> str:
    """Return the canonical text of a dedup key, or raise InvalidKeyError.

    ints (not bools) become their decimal text, so 123 and "123" are one key.
    """
    if key is None:
        raise InvalidKeyError(key, "key is None")
    if isinstance(key, bool):
        raise InvalidKeyError(key, "bool is not a key (use an int or a str)")
    if isinstance(key, int):
        return str(key)
    if not isinstance(key, str):
        raise InvalidKeyError(key, f"type {type(key).__name__} is not a key (use an int or a str)")
    if key == "":
        raise InvalidKeyError(key, "key is empty")
    if key.strip() == "":
        raise InvalidKeyError(key, "key is only whitespace")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKeyError(key, "key is not valid Unicode (lone surrogate)") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKeyError(key, f"key is {size} bytes in UTF-8, over the {MAX_KEY_BYTES}-byte limit")
    return key


def encode_key(key: object) -> str:
    """Encode a dedup key into ``[A-Za-z0-9-]+``, injectively.

    ASCII letters and digits stay as they are; every other UTF-8 byte becomes
    ``-xx`` (lower-case hex). No ``_`` can appear, so the encoded key is a
    self-delimiting part of a job id, and distinct keys never share an encoding
    ("a_b" -> "a-5fb", "a/b" -> "a-2fb", "a:b" -> "a-3ab").
    """
    raw = normalize_key(key).encode("utf-8")
    if raw.isalnum():  # bytes.isalnum: ASCII letters and digits only, which stay as they are
        return raw.decode("ascii")
    return "".join(chr(b) if b in _SAFE else f"-{b:02x}" for b in raw)


def decode_key(encoded: str) -> str:
    """Invert encode_key (for operators reading slots)."""
    if not _ENCODED_RE.fullmatch(encoded):
        raise ValueError(f"{encoded!r} is not an encoded dedup key")
    out = bytearray()
    i = 0
    while i < len(encoded):
        if encoded[i] == "-":
            out.append(int(encoded[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(encoded[i]))
            i += 1
    return out.decode("utf-8")


def validate_prefix(prefix: str) -> str:
    """Check a job id prefix is usable in an RQ job id."""
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise InvalidRequestError(f"job id prefix {prefix!r} must match [A-Za-z0-9_-]+")
    return prefix


def generate_job_id(key: Key, timestamp: float | datetime | None = None, *, prefix: str = "job") -> str:
    """Return ``<prefix>_<encoded key>_<microseconds since the epoch>``.

    Deterministic from (prefix, key, timestamp); ``timestamp`` defaults to now.
    Always a valid RQ job id, and never the same for two different keys.
    """
    validate_prefix(prefix)
    if timestamp is None:
        micros = time.time_ns() // 1000
    elif isinstance(timestamp, datetime):
        micros = round(timestamp.timestamp() * 1_000_000)
    elif isinstance(timestamp, (int, float)) and not isinstance(timestamp, bool):
        micros = round(timestamp * 1_000_000)
    else:
        raise InvalidRequestError(f"timestamp must be a number, a datetime or None, not {type(timestamp).__name__}")
    if micros < 0:
        raise InvalidRequestError("timestamp must not be before 1970")
    return job_id_of(prefix, encode_key(key), micros)


def job_id_of(prefix: str, encoded: str, micros: int | None = None) -> str:
    """``generate_job_id`` for a checked ``prefix`` and a key already encoded (``encode_key``);
    ``micros`` defaults to now."""
    return f"{prefix}_{encoded}_{time.time_ns() // 1000 if micros is None else micros}"


def parse_job_id(job_id: str, *, prefix: str = "job") -> str | None:
    """The dedup key of a job id made by generate_job_id with ``prefix``, else None.

    ``<prefix>_<encoded key>_<microseconds>``: the encoded key never holds ``_`` and the
    time is digits, so the two last ``_`` split the id unambiguously even when the prefix
    has ``_`` of its own.
    """
    head, sep, micros = job_id.rpartition("_")
    if not sep or not micros.isdigit():
        return None
    job_prefix, sep, encoded = head.rpartition("_")
    if not sep or job_prefix != prefix:
        return None
    try:
        return decode_key(encoded)
    except (ValueError, UnicodeDecodeError):
        return None

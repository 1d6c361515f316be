"""protocol._rq_time's fast path reads RQ's timestamps exactly as rq.utils.utcparse does."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
from rq.utils import utcformat, utcparse

from dedupkit.protocol import _rq_time


def test_rq_time_agrees_with_utcparse_on_rqs_own_format() -> None:
    rng = random.Random(15)
    start = datetime(1970, 1, 1, tzinfo=timezone.utc)
    for _ in range(5000):
        value = utcformat(start + timedelta(seconds=rng.uniform(0, 4e9), microseconds=rng.randrange(10**6)))
        parsed = _rq_time(value)
        assert parsed == utcparse(value) and parsed is not None and parsed.tzinfo == utcparse(value).tzinfo
    assert _rq_time("") is None
    assert _rq_time("2026-11-29T10:00:00Z") == utcparse("2026-11-29T10:00:00Z")  # RQ's older format


@pytest.mark.parametrize("value", ["2026-02-30T10:00:00.000000Z", "2026-11-29T10:00:00.000000",
                                   "2026-W48-1T10:00:00.000000Z", "2026-11-29 10:00:00.000000Z", "x" * 27])
def test_rq_time_refuses_what_utcparse_refuses(value: str) -> None:
    with pytest.raises(ValueError):
        utcparse(value)
    with pytest.raises(ValueError):
        _rq_time(value)

"""Key normalization, the injective key encoding and job ids."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dedupkit import InvalidKeyError, InvalidRequestError, decode_key, encode_key, generate_job_id, parse_job_id
from dedupkit.keys import normalize_key

RQ_ID = re.compile(r"[A-Za-z0-9_-]+")


def test_int_and_decimal_string_are_one_key() -> None:
    assert encode_key(123) == encode_key("123") == "123"
    assert generate_job_id(123, 1.0) == generate_job_id("123", 1.0)


@pytest.mark.parametrize("keys", [("a_b", "a/b", "a:b", "a-b", "a-5fb", "ab")])
def test_lookalike_keys_never_share_an_encoding(keys: tuple[str, ...]) -> None:
    encoded = [encode_key(k) for k in keys]
    assert len(set(encoded)) == len(keys)
    ids = [generate_job_id(k, 5.0) for k in keys]
    assert len(set(ids)) == len(keys)


def test_a_key_equal_to_another_keys_encoding_is_a_different_key() -> None:
    assert encode_key("a-5fb") != encode_key("a_b")
    assert decode_key(encode_key("a-5fb")) == "a-5fb"


@given(st.one_of(st.text(min_size=1, max_size=120), st.integers()))
def test_encoding_is_a_valid_id_and_round_trips(key: str | int) -> None:
    try:
        norm = normalize_key(key)
    except InvalidKeyError:
        return
    job_id = generate_job_id(key, 1700000000.25, prefix="email_process")
    assert RQ_ID.fullmatch(job_id)
    assert decode_key(encode_key(key)) == norm


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_distinct_keys_distinct_encodings(a: str, b: str) -> None:
    try:
        ea, eb = encode_key(a), encode_key(b)
    except InvalidKeyError:
        return
    assert (ea == eb) == (a == b)


@pytest.mark.parametrize(
    ("key", "reason"),
    [(None, "None"), ("", "empty"), ("   ", "whitespace"), (True, "bool"), (b"x", "bytes"), (1.5, "float"),
     ("x" * 513, "over the 512-byte"), ("é" * 257, "over the 512-byte"), ("\ud800", "surrogate")],
)
def test_invalid_keys_name_the_problem(key: object, reason: str) -> None:
    with pytest.raises(InvalidKeyError, match=reason):
        encode_key(key)


def test_512_bytes_is_the_limit() -> None:
    assert encode_key("x" * 512) == "x" * 512


def test_job_id_is_deterministic_and_ordered_by_time() -> None:
    assert generate_job_id("u", 10.0) == generate_job_id("u", 10.0) == "job_u_10000000"
    assert generate_job_id("u", 10.0) != generate_job_id("u", 10.000001)
    assert generate_job_id("u", prefix="email_process").startswith("email_process_u_")


def test_bad_prefix_and_timestamp_are_refused() -> None:
    with pytest.raises(InvalidRequestError):
        generate_job_id("u", prefix="a b")
    with pytest.raises(InvalidRequestError):
        generate_job_id("u", timestamp="soon")  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", ["job", "email_process", "a-b_c"])
@pytest.mark.parametrize("key", ["alice@example.com", "a_b", "1:2", 123, "ünï_côdé", "x" * 512])
def test_parse_job_id_inverts_generate_job_id(prefix: str, key: object) -> None:
    job_id = generate_job_id(key, 1_700_000_000.5, prefix=prefix)  # type: ignore[arg-type]
    assert parse_job_id(job_id, prefix=prefix) == normalize_key(key)
    assert parse_job_id(job_id, prefix="other") is None


@pytest.mark.parametrize("job_id", ["legacy-1", "job__1", "job_a_b", "job_a_", "job_a-zz_1", "_a_1", "job_a_1x"])
def test_parse_job_id_rejects_foreign_ids(job_id: str) -> None:
    assert parse_job_id(job_id) is None

"""Hostile provider replies for the adapter tests: every documented reply with each value swapped for one of
the wrong type, a fixed table of bodies no provider documents, and a Hypothesis strategy for any JSON at all.

`assert_parsed_or_refused` is the property every adapter parser must keep on all of them: it returns a
well-typed Outcome or raises a ProviderError, never anything else.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import strategies as st

from generations.providers.base import Outcome, ProviderError, Reply, usable_url

# One value of each JSON type, plus the values that broke parsers before: an object where a string belongs,
# a number past what a float holds, URLs httpx refuses.
WRONG: dict[str, list[Any]] = {
    "str": [{"message": "an object where a string belongs"}, ["a", "list"], 7, None, True],
    "int": ["12", {"n": 1}, [1], 10**400, -1.5e308, True],
    "float": ["0.5", {"v": 0.5}, [0.5], 10**400],
    "bool": ["true", 1, {"b": True}],
    "list": [{"0": "x"}, "not a list", 5, None],
    "dict": [["a"], "not an object", 3, None],
    "none": [{"x": 1}, ["x"], "x", 0],
}
BAD_URLS = [
    "http://[::1/x.png",
    "http://cdn.example/x\x01.png",
    "ftp://cdn.example/x.png",
    "//no-scheme/x.png",
    "",
]


def kind_of(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "list" if isinstance(value, list) else "dict"


def variants(body: Any) -> Iterator[tuple[str, Any]]:
    """(path, body) for `body` with one value, at any depth, replaced by each wrong-type value and, where it
    is a string, by each bad URL; plus the key removed."""
    if isinstance(body, dict):
        for key, value in body.items():
            for wrong in WRONG[kind_of(value)] + (BAD_URLS if isinstance(value, str) else []):
                yield key, {**body, key: wrong}
            yield f"-{key}", {k: v for k, v in body.items() if k != key}
            for path, inner in variants(value):
                yield f"{key}.{path}", {**body, key: inner}
    elif isinstance(body, list):
        for i, value in enumerate(body):
            for wrong in WRONG[kind_of(value)] + (BAD_URLS if isinstance(value, str) else []):
                yield f"[{i}]", body[:i] + [wrong] + body[i + 1 :]
            for path, inner in variants(value):
                yield f"[{i}].{path}", body[:i] + [inner] + body[i + 1 :]


# Bodies no provider documents: not JSON, the wrong JSON type, nested past Python's parser, huge.
TABLE: list[Any] = [
    b"",
    b"not json",
    b'{"id":"sandbox-truncat',
    b"\xff\xfe\x00garbage",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"status": "' + b"x" * 200_000 + b'"}',
    None,
    [],
    "a string",
    42,
    3.5,
    True,
    {"status": None},
    {"status": ""},
    {"status": 12},
    {"status": ["COMPLETED"]},
    {"status": {"code": 200, "message": "ok"}, "data": None},
    {"error": {"message": {"nested": ["deeper"]}}},
    {"error": ["a", "list"]},
]
# Wrong-typed error bodies on HTTP errors: the status still decides the code.
ERROR_BODIES: list[Any] = [
    b"",
    b"<html>502</html>",
    {"error": {"message": {"text": "an object"}, "code": ["x"]}},
    {"error": 5},
    {"message": None, "detail": [1, 2]},
    {"status": {"code": "x", "message": 5, "error_code": {"a": 1}}},
    {"details": ["not", "an", "object"], "error": None},
    {"details": {"a": {"b": "c"}}, "error": {"x": 1}},
    {"error": "x" * 100_000},
]


def json_values(max_leaves: int = 30) -> st.SearchStrategy:
    """Any JSON value, with keys the four providers use so parsers get past their first checks."""
    keys = st.sampled_from(
        [
            "id",
            "jobId",
            "status",
            "output",
            "result",
            "images",
            "image",
            "url",
            "content",
            "error",
            "message",
            "progress",
            "creditCost",
            "usage",
            "cost",
            "seed",
            "statusUrl",
            "expired",
            "data",
            "code",
            "assets",
            "has_nsfw_concepts",
            "error_code",
            "details",
        ]
    ) | st.text(max_size=8)
    statuses = st.sampled_from(
        [
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "completed",
            "done",
            "failed",
            "succeeded",
            "success",
            "error",
            "expired",
            "canceled",
            "pending",
            "in_progress",
        ]
    )
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=20)
        | statuses
        | st.sampled_from(BAD_URLS + ["https://cdn.example/a.png"])
    )
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=6),
        max_leaves=max_leaves,
    )


def as_reply(body: Any, status: int = 200) -> Reply:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Reply(status, {"Content-Type": "application/json"}, raw)


def assert_parsed_or_refused(parse: Callable[[Reply], Outcome], reply: Reply) -> Outcome | ProviderError:
    """`parse(reply)` returns an Outcome whose every field is of the type the engine stores, or raises a
    ProviderError; any other exception fails the test."""
    try:
        outcome = parse(reply)
    except ProviderError as error:
        assert isinstance(error.code, str) and isinstance(error.message, str) and error.message
        return error
    assert isinstance(outcome, Outcome)
    assert outcome.state in ("pending", "succeeded", "failed")
    assert outcome.job_id is None or (isinstance(outcome.job_id, str) and 0 < len(outcome.job_id) <= 200)
    assert isinstance(outcome.image_urls, tuple)
    assert all(isinstance(url, str) and usable_url(url) for url in outcome.image_urls)
    if outcome.state == "succeeded":
        assert outcome.image_urls
    if outcome.state == "failed":
        assert isinstance(outcome.error, ProviderError) and outcome.error.message
        assert len(outcome.error.message) <= 300 and "\n" not in outcome.error.message
    assert outcome.progress is None or (
        isinstance(outcome.progress, float) and 0.0 <= outcome.progress <= 1.0
    )
    assert outcome.progress is None or math.isfinite(outcome.progress)
    assert outcome.cost is None or (isinstance(outcome.cost, str) and len(outcome.cost) <= 40)
    assert outcome.seed is None or (isinstance(outcome.seed, int) and -(2**63) <= outcome.seed < 2**63)
    assert outcome.poll_url is None or (isinstance(outcome.poll_url, str) and usable_url(outcome.poll_url))
    return outcome


def hostile_replies(documented: list[Any]) -> Iterator[tuple[str, Reply]]:
    """Every wrong-typed variant of the documented bodies, the fixed table, and wrong-typed error bodies on
    each HTTP error status."""
    for n, body in enumerate(documented):
        for path, variant in variants(body):
            yield f"documented[{n}].{path}", as_reply(variant)
    for n, body in enumerate(TABLE):
        yield f"table[{n}]", as_reply(body)
    for status in (400, 401, 402, 403, 404, 408, 409, 429, 500, 502, 503, 504):
        for n, body in enumerate(ERROR_BODIES + TABLE):
            yield f"HTTP {status} body[{n}]", as_reply(body, status)


def escapes(parse: Callable[[Reply], Outcome], documented: list[Any]) -> list[str]:
    """The hostile replies on which `parse` does anything but return a sound Outcome or raise a
    ProviderError, each with what it did."""
    found = []
    for name, reply in hostile_replies(documented):
        try:
            assert_parsed_or_refused(parse, reply)
        except Exception as exc:  # noqa: BLE001 - reported, with the reply that caused it
            found.append(f"{name}: {type(exc).__name__}: {str(exc)[:120]}")
    return found

"""No input makes an integration answer 5xx: a property test over every endpoint of the three example
apps and the webhook views, and schemathesis over the FastAPI example's OpenAPI.

Hypothesis draws requests (method, path with odd segments, query strings,
headers, bodies: JSON of any shape and depth, huge integers, NUL and lone
surrogates, raw bytes) and sends each to each app. Every answer must be
under 500, every refusal a problem document, and a refused request must
store nothing. The apps run on SQLite, and on PostgreSQL where text a
database cannot store would show.
"""

from __future__ import annotations

import json
import pathlib
import typing
import urllib.parse

import hypothesis
import pytest
from hypothesis import strategies as st

from django_project import webhook_sagas
from django_project.testing import _django_configured  # noqa: F401  (the fixture Django apps need)
from web_harness import FRAMEWORKS, Reply, Served, serve_example, serve_webhooks

#: Examples per app; the three frameworks and two backends multiply it.
EXAMPLES = 200
SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture, hypothesis.HealthCheck.too_slow],
)
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

_HUGE = "<a 5000-digit integer>"
ODD_TEXT = st.sampled_from(["\x00", "\ud800", "\udfff", "\uffff", "é", "💥", "%00", "%ff", "../", "'", '"', "\\", " "])
TEXT = st.text(alphabet=st.characters(codec=None), max_size=20) | ODD_TEXT
SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | TEXT
    | st.just(_HUGE)
)
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=20
)
ORDER_LIKE = st.fixed_dictionaries(
    {"order_id": TEXT, "user_id": TEXT, "items": st.lists(st.fixed_dictionaries({"sku": TEXT, "quantity": SCALARS}),
                                                           max_size=3), "amount": SCALARS},
    optional={"ship_delay": SCALARS, "extra": JSON_VALUES},
)


def _encode(value: typing.Any) -> bytes:
    text = json.dumps(value, allow_nan=True).replace(json.dumps(_HUGE), "9" * 5000)
    return text.encode("utf-8", "surrogatepass")


DEEP = st.integers(min_value=60, max_value=3000).map(lambda depth: b"[" * depth + b"]" * depth)
BODIES = st.one_of(
    ORDER_LIKE.map(_encode), JSON_VALUES.map(_encode), st.binary(max_size=64), DEEP, st.just(b""),
)
SEGMENT = TEXT.map(lambda text: urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe=""))
QUERY = st.lists(st.tuples(st.sampled_from(["status", "name", "correlation_id", "older_than", "cursor", "limit",
                                            "format", "x"]), SEGMENT), max_size=4)
HEADERS = st.fixed_dictionaries(
    {}, optional={
        "content-type": st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", "x"]),
        "x-correlation-id": st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=200),
        "content-length": st.sampled_from(["abc", "-1", "99999999999999999999", "0"]),
    },
)

EXAMPLE_ROUTES = [
    ("POST", "/orders"), ("POST", "/orders/wait"), ("POST", "/orders/stream"), ("GET", "/sagas"),
    ("GET", "/sagas/{x}"), ("GET", "/sagas/{x}/history"), ("GET", "/sagas/{x}/diagram"), ("GET", "/health"),
    ("POST", "/sagas/{x}/park"), ("DELETE", "/orders"), ("GET", "/{x}"),
]
WEBHOOK_ROUTES = [
    ("POST", "/webhooks/{x}"), ("POST", "/webhooks/order_created"), ("POST", "/open-hooks/payment_due"),
    ("GET", "/webhooks/{x}/status/{x}"), ("GET", "/webhooks/order_created/status/{x}"), ("PUT", "/webhooks/{x}"),
]


def requests(routes: list[tuple[str, str]]) -> st.SearchStrategy[tuple[str, str, bytes, dict[str, str]]]:
    @st.composite
    def build(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, str]]:
        method, template = draw(st.sampled_from(routes))
        path = template.replace("{x}", draw(SEGMENT) or "x")
        query = draw(QUERY)
        if query:
            path += "?" + "&".join(f"{k}={v}" for k, v in query)
        return method, path, draw(BODIES), draw(HEADERS)

    return build()


def check(served: Served, request: tuple[str, str, bytes, dict[str, str]], before: int) -> None:
    method, path, body, headers = request
    reply: Reply = served.request(method, path, content=body, headers=headers)
    assert reply.status < 500, (method, path, body[:200], headers, reply.status, reply.text[:500])
    if reply.status >= 400:
        assert reply.media_type == "application/problem+json", (method, path, reply.status, reply.headers)
        assert len(served.stored()) == before, (method, path, body[:200], "a refused request stored a saga")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_no_input_makes_an_example_app_fail(
    framework: str, backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    with serve_example(framework, request, backend, tmp_path) as served:

        @SETTINGS
        @hypothesis.given(requests(EXAMPLE_ROUTES))
        def property_(drawn: tuple[str, str, bytes, dict[str, str]]) -> None:
            check(served, drawn, len(served.stored()))

        property_()
        served.settle()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_no_input_makes_a_webhook_view_fail(
    framework: str, backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    webhook_sagas.reset()
    with serve_webhooks(framework, request, backend, tmp_path) as served:

        @SETTINGS
        @hypothesis.given(requests(WEBHOOK_ROUTES), st.booleans())
        def property_(drawn: tuple[str, str, bytes, dict[str, str]], sign: bool) -> None:
            method, path, body, headers = drawn
            if sign:  # signed, so the body gets past the signature to the parsing
                headers = {**headers, **webhook_sagas.VERIFIER.headers(body)}
            check(served, (method, path, body, headers), len(served.stored()))

        property_()
        served.settle()

"""Every refused request gets a clear 4xx whose body can be encoded and is short (issue 12)."""

from __future__ import annotations

import pytest

from service.app import MAX_ERRORS, QUOTE_CHARS, quotable
from service.schemas import MAX_SEED
from tests.test_service import body, client, tiny_checkpoint  # noqa: F401 (fixtures)

JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    "content, field",
    [
        (b'{"conversation": [{"speaker": "A", "text": "\\ud800"}]}', "text"),
        (b'{"conversation": [{"speaker": "A", "text": "hi \\udfff there"}]}', "text"),
        (b'{"conversation": [{"speaker": "\\udc00", "text": "hi"}]}', "speaker"),
        (b'{"conversation": [], "responder": "\\ud800"}', "responder"),
        (b'{"conversation": [], "\\ud800": 1}', "body"),  # a key
        (b'{"conversation": [{"speaker": "A", "text": "hi", "\\ud83d": 1}]}', "conversation"),
    ],
)
def test_lone_surrogates_get_422_naming_the_field(client, content, field):  # noqa: F811
    r = client.post("/respond", content=content, headers=JSON)
    assert r.status_code == 422, r.text
    r.content.decode("utf-8")  # the answer is valid UTF-8
    assert any(field in map(str, err["loc"]) for err in r.json()["detail"]), r.text
    assert client.post("/respond", json=body(num_samples=1)).status_code == 200


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "",
        None,
        "application/x-www-form-urlencoded",
        "application/octet-stream",
        "multipart/form-data",
    ],
)
def test_a_body_that_is_not_utf8_gets_400_whatever_its_content_type(client, content_type):  # noqa: F811
    headers = {} if content_type is None else {"content-type": content_type}
    r = client.post("/respond", content=b"\xff\xfe\x80{", headers=headers)
    assert r.status_code == 400, r.text
    assert r.json() == {"detail": "request body is not UTF-8 text"}


def test_text_that_is_not_sent_as_json_gets_422(client):  # noqa: F811
    r = client.post(
        "/respond", content=b'{"conversation": []}', headers={"content-type": "text/plain"}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body"]


def test_errors_quote_a_huge_input_only_in_part(client):  # noqa: F811
    limit = client.app.state.engine.config.max_body_bytes
    r = client.post("/respond", json={"conversation": [], "pad": "x" * (limit - 100)})
    assert r.status_code == 422 and len(r.content) < 1000, len(r.content)
    assert r.json()["detail"][0]["loc"] == ["body", "pad"]

    # Any number of turns is accepted (the last ones are read): 20,000 bad turns give at most
    # MAX_ERRORS errors and a note, not 20,000.
    r = client.post("/respond", json={"conversation": [1] * 20_000})
    assert r.status_code == 422 and len(r.json()["detail"]) == MAX_ERRORS + 1
    assert len(r.content) < 2500, len(r.content)

    r = client.post("/respond", json={"conversation": [{"speaker": 5, "text": 5}] * 50})
    detail = r.json()["detail"]  # 100 errors
    assert r.status_code == 422 and len(detail) == MAX_ERRORS + 1
    assert detail[-1]["msg"] == f"{100 - MAX_ERRORS} more errors not shown"


def test_quotable_makes_any_value_short_encodable_json():
    nested = [[[[[["deep"]]]]]]
    quoted = quotable(
        {
            "\ud800": "\udfff",
            "nan": float("nan"),
            "raw": b"\xff",
            "deep": nested,
            "e": ValueError("x"),
        }
    )
    assert quoted == {
        "\\ud800": "\\udfff",
        "nan": "nan",
        "raw": "\\xff",
        "deep": [[["... (1 items)"]]],
        "e": "x",
    }
    assert quotable("x" * 5000) == "x" * QUOTE_CHARS + "... (5000 characters)"
    assert quotable(list(range(100)))[-1] == "... (100 items)"


def integer_schemas(node):
    if isinstance(node, dict):
        if node.get("type") == "integer":
            yield node
        for value in node.values():
            yield from integer_schemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from integer_schemas(value)


def test_openapi_publishes_integer_bounds_as_integers(client):  # noqa: F811
    r = client.get("/openapi.json")
    assert '"maximum":32.0' not in r.text
    document = r.json()
    bounds = [
        (key, value)
        for schema in integer_schemas(document)
        for key, value in schema.items()
        if key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
    ]
    assert bounds and all(type(value) is int for _, value in bounds), bounds
    properties = document["components"]["schemas"]["RespondRequest"]["properties"]
    assert (properties["num_samples"]["minimum"], properties["num_samples"]["maximum"]) == (1, 32)
    (seed,) = [s for s in properties["seed"]["anyOf"] if s.get("type") == "integer"]
    assert seed["maximum"] == MAX_SEED
    # the largest seed the schema allows is accepted
    r = client.post("/respond", json=body(num_samples=1, seed=seed["maximum"]))
    assert r.status_code == 200, r.text

"""One rule for every string that reaches the wire (issue 18 item 5): valid Unicode, no lone
surrogate, judged by the schema where the string comes in, so nothing stored can fail to
encode later.

Before: ``POST /api/v1/events`` with ``"\\ud800"`` in path, meta, source or diff answered 202
with no subscriber and 500 with one, and stored the event either way: live clients missed the
ids after it and every resume from before it closed with 1011. A client's
``{"Ping": {"id": "\\ud800"}}`` aborted its own connection without a close frame and logged a
traceback per message. Real server, real sockets.
"""

from __future__ import annotations

import json
import logging

import pytest
from tornado.httpclient import HTTPRequest

from tornado_cfgpush.testing import SSEClient

from .rawws import RawWebSocket

TOKEN = "publish-token-for-wire-tests"
LONE = "\ud800"
WIRE = "must be valid Unicode text (no lone surrogate such as \\ud800)"

pytestmark = pytest.mark.settings(publish_token=TOKEN)


async def post(http_client, http_url, body) -> tuple[int, dict]:
    response = await http_client.fetch(
        HTTPRequest(
            f"{http_url}/api/v1/events",
            method="POST",
            body=json.dumps(body),  # ASCII: "\ud800" escaped
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        ),
        raise_error=False,
    )
    return response.code, json.loads(response.body)


def event(**fields) -> dict:
    return {"tenant_id": "acme", "change_type": "modified", "path": "app.json", **fields}


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"path": f"a/{LONE}.json"}, {"path": [f"path {WIRE}."]}),
        ({"source": LONE}, {"source": [WIRE]}),
        ({"meta": {"note": LONE}}, {"meta": {"note": {"value": [WIRE]}}}),
        ({"meta": {LONE: 1}}, {"meta": {"\\ud800": {"key": [WIRE]}}}),
        ({"meta": {"deep": [1, {"x": {"\udfff": 2}}]}}, {"meta": {"deep": {"value": [f"a key at /1/x {WIRE}"]}}}),
        ({"meta": {"deep": [{"x": f"ok{LONE}"}]}}, {"meta": {"deep": {"value": [f"the string at /0/x {WIRE}"]}}}),
        ({"diff": {"added": ["/ok", f"/{LONE}"]}}, {"diff": {"added": {"1": [WIRE]}}}),
        ({"diff": {"changed": ["/\udc80x"]}}, {"diff": {"changed": {"0": [WIRE]}}}),
    ],
)
@pytest.mark.gen_test(timeout=30)
async def test_lone_surrogates_are_400_naming_the_field_and_stored_nowhere(
    http_client, http_url, connect, core, fields, expected
):
    ws = await connect("acme")
    await ws.expect("Welcome")
    sse = await SSEClient.open(http_url, "acme")
    try:
        await sse.expect("Welcome")
        code, answer = await post(http_client, http_url, event(**fields))
        assert code == 400, answer
        assert answer["fields"] == expected
        assert (await core.broker.catch_up("acme", None)).last_event_id is None  # nothing stored
        await ws.expect_nothing(0.1)
        # Both connections are intact: the next event reaches them.
        code, accepted = await post(http_client, http_url, event(path="next.json"))
        assert code == 202
        assert (await ws.expect("ConfigChanged"))["event_id"] == accepted["event_id"]
        assert (await sse.expect("ConfigChanged"))["event_id"] == accepted["event_id"]
    finally:
        sse.close()


@pytest.mark.gen_test(timeout=30)
async def test_history_stays_clean_so_resuming_clients_are_served(http_client, http_url, connect, core):
    """The poison: a refused event must not sit in the history between two good ones."""
    code, first = await post(http_client, http_url, event(path="one.json"))
    assert code == 202
    for fields in ({"path": LONE}, {"meta": {LONE: LONE}}, {"source": LONE}, {"diff": {"removed": [f"/{LONE}"]}}):
        assert (await post(http_client, http_url, event(**fields)))[0] == 400
    code, second = await post(http_client, http_url, event(path="two.json"))
    assert code == 202
    ws = await connect("acme", last_event_id=first["event_id"])
    assert (await ws.expect("Welcome"))["last_event_id"] == second["event_id"]
    assert (await ws.expect("ConfigChanged"))["event_id"] == second["event_id"]
    sse = await SSEClient.open(http_url, "acme", last_event_id=first["event_id"])
    try:
        await sse.expect("Welcome")
        assert (await sse.expect("ConfigChanged"))["event_id"] == second["event_id"]
    finally:
        sse.close()


@pytest.mark.gen_test(timeout=30)
async def test_odd_but_valid_unicode_is_accepted_and_delivered_as_sent(http_client, http_url, connect, core):
    """The rule refuses only what cannot be encoded: astral characters (a surrogate pair in the
    JSON), noncharacters, BOMs, line separators and control characters in a pointer pass."""
    ws = await connect("acme")
    await ws.expect("Welcome")
    odd = "\U0001f600\ufffe\ufeff\u2028\u0085é"
    code, answer = await post(
        http_client,
        http_url,
        event(
            path=f"{odd}/x.json",
            source=odd[:5],
            meta={odd: [odd, {"\U0010ffff": None}]},
            diff={"added": [f"/{odd}", "/a\u0001b", "/tab\there/~0~1"], "removed": [], "changed": []},
        ),
    )
    assert code == 202, answer
    delivered = await ws.expect("ConfigChanged")
    assert delivered["path"] == f"{odd}/x.json"
    assert delivered["meta"] == {odd: [odd, {"\U0010ffff": None}]}
    assert delivered["diff"]["added"] == [f"/{odd}", "/a\u0001b", "/tab\there/~0~1"]


@pytest.mark.parametrize("pointer", ["a", "/a~", "/a~2b", "/~/x"])
@pytest.mark.gen_test(timeout=30)
async def test_a_diff_entry_must_be_a_json_pointer(http_client, http_url, core, pointer):
    code, answer = await post(http_client, http_url, event(diff={"changed": [pointer]}))
    assert code == 400
    assert answer["fields"] == {"diff": {"changed": {"0": ["must be a JSON Pointer (RFC 6901)."]}}}


@pytest.mark.gen_test(timeout=30)
async def test_a_body_nested_too_deeply_is_400_not_500(http_client, http_url, core):
    code, _ = await post(http_client, http_url, event())  # warm: the API works
    assert code == 202
    deep = '{"tenant_id": "acme", "change_type": "modified", "meta": {"x": ' + "[" * 5000 + "]" * 5000 + "}}"
    response = await http_client.fetch(
        HTTPRequest(
            f"{http_url}/api/v1/events",
            method="POST",
            body=deep,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        ),
        raise_error=False,
    )
    assert response.code == 400
    assert json.loads(response.body) == {"error": "the body is nested too deeply"}


# -- client frames ----------------------------------------------------------------------------------

CLIENT_FRAMES = [
    ('{"Ping": {"id": "\\ud800"}}', f"Ping: id: {WIRE}"),
    ('{"Ping": {"id": "a\\udfffb"}}', f"Ping: id: {WIRE}"),
    ('{"Ping": {"\\ud800": 1}}', "Ping: \\ud800: Unknown field."),
    ('{"\\ud800": {}}', "\\ud800: Unknown field."),
    ('{"Ack": {"event_id": "\\ud800"}}', "Ack: event_id: event_id must look like '<digits>-<digits>'."),
    ('{"Refresh": {"token": "\\ud800"}}', f"Refresh: token: {WIRE}"),
    ("[" * 3000 + "]" * 3000, "the message is nested too deeply."),
]


@pytest.mark.settings(max_message_size=8192)
@pytest.mark.gen_test(timeout=30)
async def test_a_client_frame_with_a_lone_surrogate_gets_an_error_and_the_connection_stays(server_port, core, caplog):
    caplog.set_level(logging.INFO)
    ws = await RawWebSocket.connect(server_port, "tenant_id=acme")
    try:
        assert "Welcome" in await ws.read_json()
        for text, message in CLIENT_FRAMES:
            ws.send_frame(0x1, text.encode("ascii"))
            assert await ws.read_json() == {"Error": {"code": "bad_message", "message": message}}, text
        # Still open and served: a valid astral id is echoed as sent.
        ws.send_frame(0x1, b'{"Ping": {"id": "\\ud83d\\ude00"}}')
        assert await ws.read_json() == {"Pong": {"id": "\U0001f600"}}
        assert core.hub.connection_count("acme") == 1
    finally:
        ws.close()
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

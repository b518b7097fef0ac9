"""docs/openapi.yaml against a running ``cfgpush-serve``: schemathesis generates publish requests
(valid ones and, in negative mode, invalid ones) and checks every answer against the document:
no 5xx, documented status codes and content types, response bodies as described, valid data
accepted, invalid data refused. The publish budget's 429 and the Host rule's 421 are checked
against the document too.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, settings
from schemathesis import GenerationMode, checks

from tornado_cfgpush.rules import PATH_MAX, SEGMENT_MAX
from tornado_cfgpush.testing import LISTENING

OPENAPI = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
TOKENS = ("first-publish-token", "second-publish-token")
EXAMPLES = 150
BODY_CAP = 1024 * 1024  # app.py's max_body_size


def serve(start, config_dir, io_loop, *flags: str):
    """``cfgpush-serve`` with two publish tokens (the flag repeated) and ``flags``."""
    server = start(
        "--port",
        "0",
        "--config-dir",
        str(config_dir),
        "--disable-plugin",
        "filesystem",
        "--publish-token",
        TOKENS[0],
        "--publish-token",
        TOKENS[1],
        *flags,
    )
    port = int(io_loop.run_sync(lambda: server.wait_log(LISTENING), timeout=90).group(1))
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture
def publish_server(start, config_dir, io_loop):
    return serve(start, config_dir, io_loop)


def bytes_beyond_the_document(path) -> bool:
    """A path within the document's character counts but over the byte limits it describes in
    words (JSON Schema counts characters, the rule counts bytes of UTF-8): the document cannot
    say how the server answers it, so such a case is not generated."""
    if not isinstance(path, str):
        return False
    segments = path.split("/")
    within_characters = len(path) <= PATH_MAX and all(len(s) <= SEGMENT_MAX for s in segments)
    encoded = [s.encode("utf-8", "surrogatepass") for s in segments]
    within_bytes = len(path.encode("utf-8", "surrogatepass")) <= PATH_MAX and all(
        len(s) <= SEGMENT_MAX for s in encoded
    )
    return within_characters and not within_bytes


def test_openapi_document_is_valid_and_describes_the_publish_api():
    schema = schemathesis.openapi.from_path(OPENAPI)
    operation = schema["/api/v1/events"]["POST"]
    assert operation.method.upper() == "POST"


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_publish_api_conforms_to_openapi(publish_server, mode, record_property):
    server, base_url = publish_server
    schema = schemathesis.openapi.from_path(OPENAPI)
    operation = schema["/api/v1/events"]["POST"]
    session = requests.Session()
    tried = {"n": 0, "statuses": {}}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        assume(not bytes_beyond_the_document(case.body.get("path") if isinstance(case.body, dict) else None))
        # Over the server's body cap (1 MiB) Tornado's HTTP layer answers an empty 400 before any
        # handler runs: not the API's answer. A long enough `patch` array gets there.
        assume(not (isinstance(case.body, dict | list) and len(json.dumps(case.body)) > BODY_CAP))
        # content must be the bytes of checksum (422 otherwise): a condition between two fields
        # the document states in words; generated pairs never meet it.
        assume(not (mode == GenerationMode.POSITIVE and isinstance(case.body, dict) and "content" in case.body))
        tried["n"] += 1
        token = TOKENS[tried["n"] % 2]  # either token is accepted
        response = case.call(
            base_url=base_url, session=session, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        tried["statuses"][response.status_code] = tried["statuses"].get(response.status_code, 0) + 1
        # 413 (over 64 KiB) is a documented refusal that schemathesis' negative check does not
        # count as one; every other check still applies to it.
        excluded = [checks.negative_data_rejection] if response.status_code == 413 else None
        case.validate_response(response, headers={"Authorization": f"Bearer {token}"}, excluded_checks=excluded)

    try:
        check()
    finally:
        session.close()
    record_property("openapi_cases", tried["n"])
    assert tried["n"] >= 50
    statuses = tried["statuses"]
    if mode == GenerationMode.POSITIVE:
        assert statuses.get(202, 0) > 0, statuses
    else:  # schemathesis' negative_data_rejection judged each case; some negate only a header
        assert statuses.get(400, 0) > 0, statuses
    assert not any(code >= 500 for code in statuses), statuses
    assert "Traceback" not in server.text()
    for token in TOKENS:
        assert token not in server.text()


def test_wrong_and_missing_tokens_are_refused_as_documented(publish_server):
    _, base_url = publish_server
    body = json.dumps({"tenant_id": "acme", "change_type": "modified"})
    url = f"{base_url}/api/v1/events"
    headers = {"Content-Type": "application/json"}
    assert requests.post(url, data=body, headers=headers, timeout=10).status_code == 401
    wrong = requests.post(
        url, data=body, headers={**headers, "Authorization": "Bearer not-a-publish-token"}, timeout=10
    )
    assert wrong.status_code == 403
    for token in TOKENS:
        ok = requests.post(url, data=body, headers={**headers, "Authorization": f"Bearer {token}"}, timeout=10)
        assert ok.status_code == 202, ok.text


def test_budget_and_host_refusals_are_as_documented(start, config_dir, io_loop):
    """Past a token's budget: 429 with Retry-After; the other token has its own budget. A Host
    not in --allowed-host: 421. Both answers checked against the document."""
    server, base_url = serve(
        start, config_dir, io_loop, "--publish-rate", "1", "--publish-burst", "2", "--allowed-host", "127.0.0.1"
    )
    operation = schemathesis.openapi.from_path(OPENAPI)["/api/v1/events"]["POST"]
    body = {"tenant_id": "acme", "change_type": "modified", "path": "a.json"}

    def post(token: str, **headers: str):
        headers = {"Authorization": f"Bearer {token}", **headers}
        case = operation.Case(body=body, media_type="application/json", headers=headers)
        response = case.call(base_url=base_url, timeout=10)
        case.validate_response(response, headers=headers)
        return response

    assert [post(TOKENS[0]).status_code for _ in range(2)] == [202, 202]
    over = post(TOKENS[0])
    assert over.status_code == 429, over.text
    assert int(over.headers["retry-after"][0]) >= 1  # schemathesis: lowercase names, lists of values
    assert "budget" in over.json()["error"]
    assert post(TOKENS[1]).status_code == 202  # a budget per token
    misdirected = post(TOKENS[1], Host="rebound.example")
    assert misdirected.status_code == 421
    assert "Host" in misdirected.json()["error"]
    assert "Traceback" not in server.text()


ADMIN = "openapi-admin-token"
QUERY_NAMES = {"prefix", "with_clients", "limit", "after"}  # GET /api/v1/tenants's parameters


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_tenant_list_conforms_to_openapi(start, config_dir, io_loop, mode):
    """``GET /api/v1/tenants`` (paged, filtered; issue #17.3) against the document: every answer
    documented, its body as described, bad parameters refused."""
    for n in range(12):
        (config_dir / f"t{n:02d}").mkdir()
        (config_dir / f"t{n:02d}" / "a.json").write_text("{}")
    server = start("--port", "0", "--config-dir", str(config_dir), "--admin-token", ADMIN)
    port = int(io_loop.run_sync(lambda: server.wait_log(LISTENING), timeout=90).group(1))
    base_url = f"http://127.0.0.1:{port}"
    operation = schemathesis.openapi.from_path(OPENAPI)["/api/v1/tenants"]["GET"]
    session = requests.Session()
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {ADMIN}"}

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=10)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        # A negative case whose only violations are in its headers (the Authorization it drops,
        # extra ones) is sent with the admin token all the same: what reaches the server is a
        # valid request, and its 200 is no accepted negative data.
        sent = parse_qs(urlsplit(response.request.url).query, keep_blank_values=True)
        valid_query = set(sent) <= QUERY_NAMES and all(len(values) == 1 for values in sent.values())
        excluded = [checks.negative_data_rejection] if response.status_code == 200 and valid_query else None
        case.validate_response(response, headers=headers, excluded_checks=excluded)

    try:
        check()
    finally:
        session.close()
    assert statuses.get(200 if mode == GenerationMode.POSITIVE else 400, 0) > 0, statuses
    assert not any(code >= 500 for code in statuses), statuses
    assert "Traceback" not in server.text()


# -- the files API (--serve-content, issue #14) ---------------------------------------------------

FILES_ADMIN = "files-admin-token"
FILES = ("/api/v1/tenants/{tenant}/files", "/api/v1/tenants/{tenant}/files/{path}")


@pytest.fixture
def files_server(start, config_dir, io_loop):
    (config_dir / "acme" / "ui").mkdir()
    (config_dir / "acme" / "ui" / "theme.json").write_text('{"color": "blue"}')
    (config_dir / "acme" / "notes.txt").write_text("plain")
    server = start(
        "--port", "0", "--config-dir", str(config_dir), "--admin-token", FILES_ADMIN, "--serve-content", "ui/*,*.txt"
    )
    port = int(io_loop.run_sync(lambda: server.wait_log(LISTENING), timeout=90).group(1))
    return server, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("route", FILES)
def test_files_api_conforms_to_openapi(files_server, route, mode):
    server, base_url = files_server
    operation = schemathesis.openapi.from_path(OPENAPI)[route]["GET"]
    session = requests.Session()
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {FILES_ADMIN}"}

    @settings(
        max_examples=EXAMPLES // 3,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],  # no shrinking: a failure is reported as found
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        # A request head over --max-header-size has its connection closed (documented for every
        # endpoint): percent-encoded, a character of a path is up to 12 bytes.
        assume(len(json.dumps(case.path_parameters or {})) < 1000)
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=10)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        # A generated path is never a negative case the server can see: any string names a
        # file that is not served (404), which schemathesis' negative check does not expect.
        case.validate_response(response, headers=headers, excluded_checks=[checks.negative_data_rejection])

    try:
        check()
    finally:
        session.close()
    assert not any(code >= 500 for code in statuses), statuses
    assert "Traceback" not in server.text()


def test_files_api_answers_are_as_documented(files_server):
    """The answers a generator rarely reaches: a served file, its 304, the listing."""
    _, base_url = files_server
    schema = schemathesis.openapi.from_path(OPENAPI)
    one, listing = schema[FILES[1]]["GET"], schema[FILES[0]]["GET"]
    headers = {"Authorization": f"Bearer {FILES_ADMIN}"}

    def call(operation, **kwargs):
        case = operation.Case(headers=kwargs.pop("headers", headers), **kwargs)
        response = case.call(base_url=base_url, timeout=10)
        case.validate_response(response, headers=case.headers)
        return response

    ok = call(one, path_parameters={"tenant": "acme", "path": "ui/theme.json"})
    assert ok.status_code == 200 and ok.content == b'{"color": "blue"}'
    held = call(
        one,
        path_parameters={"tenant": "acme", "path": "ui/theme.json"},
        headers={**headers, "If-None-Match": ok.headers["etag"][0]},
    )
    assert held.status_code == 304
    assert call(one, path_parameters={"tenant": "acme", "path": "notes.txt"}).status_code == 200
    theme = {"tenant": "acme", "path": "ui/theme.json"}
    document = call(one, path_parameters=theme, query={"form": "document"})
    assert document.status_code == 200 and document.content == b'{"color":"blue"}'
    assert document.headers["cfgpush-checksum"][0] == ok.headers["etag"][0].strip('"')
    tag = document.headers["etag"][0]
    held = call(one, path_parameters=theme, query={"form": "document"}, headers={**headers, "If-None-Match": tag})
    assert held.status_code == 304
    plain = call(one, path_parameters={"tenant": "acme", "path": "notes.txt"}, query={"form": "document"})
    assert plain.status_code == 422 and plain.json()["reason"] == "not_structured"
    assert call(one, path_parameters=theme, query={"form": "bytes"}).status_code == 400
    assert call(one, path_parameters={"tenant": "acme", "path": "app.json"}).status_code == 404
    files = call(listing, path_parameters={"tenant": "acme"}).json()["files"]
    assert sorted(files) == ["notes.txt", "ui/theme.json"]
    assert call(listing, path_parameters={"tenant": "acme"}, headers={}).status_code == 200  # no JWT key: open
    assert call(listing, path_parameters={"tenant": "-bad"}).status_code == 400

"""docs/openapi.yaml against a running ``cfgpush-serve``: schemathesis generates publish requests
(valid ones and, in negative mode, invalid ones) and checks every answer against the document:
no 5xx, documented status codes and content types, response bodies as described, valid data
accepted, invalid data refused.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks

from .serveproc import LISTENING

OPENAPI = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
TOKENS = ("first-publish-token", "second-publish-token")
EXAMPLES = 150


@pytest.fixture
def publish_server(start, config_dir, io_loop, tmp_path):
    """``cfgpush-serve`` with two publish tokens, the second from a file (repeatable flag + _FILE)."""
    server = start("--port", "0", "--config-dir", str(config_dir), "--disable-plugin", "filesystem",
                   "--publish-token", TOKENS[0], "--publish-token", TOKENS[1])
    port = int(io_loop.run_sync(lambda: server.wait_log(LISTENING), timeout=90).group(1))
    yield server, f"http://127.0.0.1:{port}"


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

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        tried["n"] += 1
        token = TOKENS[tried["n"] % 2]  # either token is accepted
        response = case.call(base_url=base_url, session=session, headers={"Authorization": f"Bearer {token}"},
                             timeout=10)
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
    wrong = requests.post(url, data=body, headers={**headers, "Authorization": "Bearer not-a-publish-token"}, timeout=10)
    assert wrong.status_code == 403
    for token in TOKENS:
        ok = requests.post(url, data=body, headers={**headers, "Authorization": f"Bearer {token}"}, timeout=10)
        assert ok.status_code == 202, ok.text

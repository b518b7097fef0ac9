"""JWT authentication of /ws and /events (issue 5): the failure matrix, refresh, expiry, keys from
files and JWKS, the admin token, the ``cfgpush_authorize`` hook, origins, and tokens kept out of
every log line. Real server, real sockets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from tornado_cfgpush import hookimpl
from tornado_cfgpush.auth import (
    Decision,
    describe_input_error,
    origin_allowed,
    parse_hosts,
    parse_origin,
)
from tornado_cfgpush.redaction import redact
from tornado_cfgpush.testing import LISTENING, SSEClient, publish, wait_for

from .rawws import RawWebSocket

SECRET = "test-secret-of-at-least-32-bytes!!"
OTHER_SECRET = "another-secret-of-at-least-32-bytes"
ADMIN = "admin-token-for-the-dashboard"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def jwk(key, kid: str) -> dict:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    data = json.loads(algorithm.to_jwk(key.public_key()))
    data["kid"] = kid
    return data


def token(tenant="acme", *, key=SECRET, alg="HS256", exp_in: float | None = 60, headers=None, **claims) -> str:
    payload = {"tenant_id": tenant, **claims}
    if exp_in is not None:
        payload["exp"] = int(time.time() + exp_in)
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


@pytest.fixture
def settings(request, config_dir, tmp_path):
    """As tornado_cfgpush.testing's, plus placeholders for key files: "@rsa.pem", "@ec.pem", "@jwks.json"."""
    from tornado_cfgpush.settings import Settings

    (tmp_path / "rsa.pem").write_bytes(pem(RSA_KEY))
    (tmp_path / "ec.pem").write_bytes(pem(EC_KEY))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk(RSA_KEY, "k1"), jwk(EC_KEY, "k2")]}))
    marker = request.node.get_closest_marker("settings")
    overrides = dict(marker.kwargs) if marker else {}
    for name, value in overrides.items():
        if isinstance(value, str) and value.startswith("@"):
            overrides[name] = tmp_path / value[1:]
    return Settings(**{"config_dir": config_dir, "debounce_ms": 30, **overrides})


async def status_of(port: int, query: str, headers: str = "") -> tuple[int, dict | None, RawWebSocket]:
    ws = await RawWebSocket.connect(port, query, extra_headers=headers)
    body = json.loads(ws.body) if ws.body else None
    return ws.status, body, ws


async def expect_refused(port: int, query: str, status: int, fragment: str, headers: str = "") -> dict:
    got, body, ws = await status_of(port, query, headers)
    ws.close()
    assert got == status, (got, body)
    assert fragment in body["error"], body
    return body


async def expect_welcome(port: int, query: str, headers: str = "", tenant: str = "acme") -> RawWebSocket:
    got, body, ws = await status_of(port, query, headers)
    assert got == 101, (got, body)
    assert (await ws.read_json())["Welcome"]["tenant_id"] == tenant
    return ws


# -- the matrix (HS256) ---------------------------------------------------------------------------


def _none_token() -> str:
    return jwt.encode({"tenant_id": "acme", "exp": int(time.time() + 60)}, None, algorithm="none")


MATRIX = [
    ("missing", lambda: None, 401, "token required"),
    ("empty", lambda: "", 401, "token required"),
    ("garbage", lambda: "not-a-jwt", 401, "malformed"),
    ("three dots", lambda: "a.b.c", 401, "malformed"),
    ("expired", lambda: token(exp_in=-5), 401, "expired"),
    ("bad signature", lambda: token(key=OTHER_SECRET), 401, "signature is invalid"),
    ("tampered payload", lambda: _tamper(token()), 401, "signature is invalid"),
    ("alg none", _none_token, 401, "algorithm is not accepted"),
    ("alg HS512", lambda: token(alg="HS512", key=SECRET + SECRET), 401, "algorithm is not accepted"),
    ("alg RS256 with a secret configured", lambda: token(key=RSA_KEY, alg="RS256"), 401, "algorithm is not accepted"),
    ("no exp", lambda: token(exp_in=None), 401, "no 'exp' claim"),
    # issue 18 item 11: RFC 7519's NumericDate is a number; PyJWT alone took "1999999999"
    (
        "exp a numeric string",
        lambda: token(exp_in=None, exp=str(int(time.time()) + 60)),
        401,
        "'exp' claim must be a number",
    ),
    ("exp a float string", lambda: token(exp_in=None, exp=f"{time.time() + 60:.3f}"), 401, "token"),
    ("exp true", lambda: token(exp_in=None, exp=True), 401, "token"),
    ("nbf a numeric string", lambda: token(nbf=str(int(time.time()) - 60)), 401, "'nbf' claim must be a number"),
    ("iat a numeric string", lambda: token(iat=str(int(time.time()) - 60)), 401, "'iat' claim must be a number"),
    ("not before in the future", lambda: token(nbf=int(time.time()) + 60), 401, "not valid yet"),
    ("another tenant", lambda: token("globex"), 403, "not for this tenant"),
    ("tenant differs by case", lambda: token("Acme"), 403, "not for this tenant"),
    (
        "no tenant claim",
        lambda: jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"),
        403,
        "no 'tenant_id' claim",
    ),
    ("tenant claim not a string", lambda: token(["acme"]), 403, "no 'tenant_id' claim"),
]


def _tamper(good: str) -> str:
    header, payload, signature = good.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["tenant_id"] = "acme"
    claims["exp"] += 3600
    forged = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    return f"{header}.{forged}.{signature}"


@pytest.mark.settings(jwt_secret=SECRET)
@pytest.mark.parametrize("case, make, status, fragment", MATRIX, ids=[m[0] for m in MATRIX])
@pytest.mark.gen_test
async def test_ws_refusals(server_port, core, case, make, status, fragment):
    given = make()
    query = "tenant_id=acme" + (f"&token={given}" if given is not None else "")
    body = await expect_refused(server_port, query, status, fragment)
    assert SECRET not in json.dumps(body)
    if given:
        assert given not in json.dumps(body)
    assert core.hub.connection_count() == 0 and core.limits.total == 0


@pytest.mark.settings(jwt_secret=SECRET)
@pytest.mark.parametrize("case, make, status, fragment", MATRIX, ids=[m[0] for m in MATRIX])
@pytest.mark.gen_test
async def test_sse_refusals(http_client, http_url, core, case, make, status, fragment):
    given = make()
    headers = {"Authorization": f"Bearer {given}"} if given else {}
    response = await http_client.fetch(f"{http_url}/events?tenant_id=acme", headers=headers, raise_error=False)
    assert response.code == status
    assert fragment in json.loads(response.body)["error"]
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert core.limits.total == 0


@pytest.mark.settings(jwt_secret=SECRET)
@pytest.mark.gen_test
async def test_valid_token_in_query_or_header_is_served_its_tenant_only(server_port, core):
    by_query = await expect_welcome(server_port, f"tenant_id=acme&token={token()}")
    by_header = await expect_welcome(server_port, "tenant_id=acme", headers=f"Authorization: Bearer {token()}\r\n")
    globex = await expect_welcome(server_port, f"tenant_id=globex&token={token('globex')}", tenant="globex")
    try:
        await publish(core, "globex", "g.json")
        await publish(core, "acme", "a.json")
        for ws in (by_query, by_header):
            assert (await ws.read_json())["ConfigChanged"]["path"] == "a.json"
        assert (await globex.read_json())["ConfigChanged"]["path"] == "g.json"
    finally:
        for ws in (by_query, by_header, globex):
            ws.close()


@pytest.mark.settings(jwt_secret=SECRET)
@pytest.mark.gen_test
async def test_two_different_tokens_or_a_repeated_one_are_refused(server_port):
    await expect_refused(
        server_port,
        f"tenant_id=acme&token={token()}",
        400,
        "give the token once",
        headers=f"Authorization: Bearer {token(exp_in=30)}\r\n",
    )
    await expect_refused(
        server_port, f"tenant_id=acme&token={token()}&token={token()}", 400, "token must be given once"
    )


@pytest.mark.settings(jwt_secret=SECRET)
@pytest.mark.gen_test
async def test_numeric_dates_may_be_fractional(server_port):
    now = time.time()
    fractional = token(exp_in=None, exp=now + 60.5, nbf=now - 1.5, iat=now)
    (await expect_welcome(server_port, f"tenant_id=acme&token={fractional}")).close()


@pytest.mark.settings(jwt_secret=SECRET, jwt_issuer="https://issuer.example", jwt_audience="cfgpush")
@pytest.mark.parametrize(
    "claims, status, fragment",
    [
        ({"iss": "https://issuer.example", "aud": "cfgpush"}, 101, ""),
        ({"iss": "https://evil.example", "aud": "cfgpush"}, 401, "issuer"),
        ({"aud": "cfgpush"}, 401, "'iss' claim"),
        ({"iss": "https://issuer.example", "aud": "another-service"}, 401, "audience"),
        ({"iss": "https://issuer.example"}, 401, "'aud' claim"),
    ],
)
@pytest.mark.gen_test
async def test_issuer_and_audience(server_port, claims, status, fragment):
    query = f"tenant_id=acme&token={token(**claims)}"
    if status == 101:
        (await expect_welcome(server_port, query)).close()
    else:
        await expect_refused(server_port, query, status, fragment)


@pytest.mark.settings(jwt_secret=SECRET, jwt_tenant_claim="https://example.com/tenant")
@pytest.mark.gen_test
async def test_tenant_claim_is_configurable(server_port):
    good = jwt.encode({"https://example.com/tenant": "acme", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    (await expect_welcome(server_port, f"tenant_id=acme&token={good}")).close()
    await expect_refused(server_port, f"tenant_id=acme&token={token()}", 403, "no 'https://example.com/tenant' claim")


# -- keys from files ------------------------------------------------------------------------------


@pytest.mark.settings(jwt_public_key="@rsa.pem")
@pytest.mark.gen_test
async def test_rs256_public_key_file(server_port):
    (await expect_welcome(server_port, f"tenant_id=acme&token={token(key=RSA_KEY, alg='RS256')}")).close()
    await expect_refused(server_port, f"tenant_id=acme&token={token(key=RSA_OTHER, alg='RS256')}", 401, "signature")
    # Algorithm confusion: HS256 "signed" with the public key's PEM must not pass.
    confused = jwt.api_jws.PyJWS()
    forged = confused.encode(
        json.dumps({"tenant_id": "acme", "exp": int(time.time()) + 60}).encode(), SECRET, algorithm="HS256"
    )
    header, payload, _ = forged.split(".")
    import hashlib
    import hmac

    signing_input = f"{header}.{payload}".encode()
    signature = jwt.utils.base64url_encode(hmac.new(pem(RSA_KEY), signing_input, hashlib.sha256).digest()).decode()
    await expect_refused(server_port, f"tenant_id=acme&token={header}.{payload}.{signature}", 401, "algorithm")
    await expect_refused(server_port, f"tenant_id=acme&token={_none_token()}", 401, "algorithm")
    await expect_refused(server_port, f"tenant_id=acme&token={token(key=EC_KEY, alg='ES256')}", 401, "algorithm")


@pytest.mark.settings(jwt_public_key="@ec.pem")
@pytest.mark.gen_test
async def test_es256_public_key_file(server_port):
    (await expect_welcome(server_port, f"tenant_id=acme&token={token(key=EC_KEY, alg='ES256')}")).close()
    await expect_refused(server_port, f"tenant_id=acme&token={token(key=RSA_KEY, alg='RS256')}", 401, "algorithm")
    await expect_refused(
        server_port,
        f"tenant_id=acme&token={token(key=ec.generate_private_key(ec.SECP256R1()), alg='ES256')}",
        401,
        "signature",
    )


@pytest.mark.settings(jwks="@jwks.json")
@pytest.mark.gen_test
async def test_jwks_file_picks_the_key_by_kid_and_reloads(server_port, settings):
    rs = token(key=RSA_KEY, alg="RS256", headers={"kid": "k1"})
    es = token(key=EC_KEY, alg="ES256", headers={"kid": "k2"})
    for good in (rs, es):
        (await expect_welcome(server_port, f"tenant_id=acme&token={good}")).close()
    await expect_refused(server_port, f"tenant_id=acme&token={token(key=RSA_KEY, alg='RS256')}", 401, "kid")
    await expect_refused(
        server_port, f"tenant_id=acme&token={token(key=RSA_KEY, alg='RS256', headers={'kid': 'k9'})}", 401, "kid"
    )
    # A key under another key's kid: the signature check fails.
    await expect_refused(
        server_port, f"tenant_id=acme&token={token(key=EC_KEY, alg='ES256', headers={'kid': 'k1'})}", 401, "algorithm"
    )
    await expect_refused(
        server_port,
        f"tenant_id=acme&token={token(key=RSA_OTHER, alg='RS256', headers={'kid': 'k1'})}",
        401,
        "signature",
    )
    # Rotation: a new key written to the file is used without a restart.
    settings.jwks.write_text(json.dumps({"keys": [jwk(RSA_KEY, "k1"), jwk(RSA_OTHER, "k3")]}))
    rotated = token(key=RSA_OTHER, alg="RS256", headers={"kid": "k3"})
    (await expect_welcome(server_port, f"tenant_id=acme&token={rotated}")).close()
    await expect_refused(server_port, f"tenant_id=acme&token={es}", 401, "algorithm")  # its key is gone


@pytest.mark.settings(jwt_public_key="@rsa.pem")
@pytest.mark.gen_test
async def test_unusable_key_file_refuses_everyone_with_503(server_port, settings):
    """A misconfiguration fails closed (the CLI refuses such a file at start; this is a test's Settings)."""
    settings.jwt_public_key.write_text("not a key")
    from tornado_cfgpush.auth import verifier

    verifier.cache_clear()
    await expect_refused(server_port, f"tenant_id=acme&token={token(key=RSA_KEY, alg='RS256')}", 503, "misconfigured")


# -- expiry and refresh ---------------------------------------------------------------------------


@pytest.mark.settings(jwt_secret=SECRET)
@pytest.mark.gen_test(timeout=15)
async def test_connection_is_closed_with_1008_at_expiry(connect, core):
    client = await connect("acme", token=token(exp_in=1.5))
    await client.expect("Welcome")
    closed = await client.closed(timeout=5)
    assert (closed.code, closed.reason) == (1008, "token expired")
    await wait_for(lambda: core.hub.connection_count() == 0 and core.limits.total == 0)


@pytest.mark.settings(jwt_secret=SECRET)
@pytest.mark.gen_test(timeout=15)
async def test_refresh_with_a_newer_token_keeps_the_connection(connect, core):
    client = await connect("acme", token=token(exp_in=1.5))
    try:
        await client.expect("Welcome")
        newer = token(exp_in=120)
        await client.send({"Refresh": {"token": newer}})
        refreshed = await client.expect("Refreshed")
        assert refreshed["expires_at"] == jwt.decode(newer, SECRET, algorithms=["HS256"])["exp"]
        await asyncio.sleep(2.5)  # wait-ok: past the first token's expiry
        await client.send("Ping")
        assert await client.next() == "Pong"
        event_id = await publish(core)
        assert (await client.expect("ConfigChanged"))["event_id"] == event_id
    finally:
        client.close()


@pytest.mark.settings(jwt_secret=SECRET)
@pytest.mark.parametrize(
    "bad, fragment",
    [
        (lambda: token("globex", exp_in=120), "not for this tenant"),
        (lambda: token(exp_in=-10), "expired"),
        (lambda: token(key=OTHER_SECRET, exp_in=120), "signature"),
        (lambda: "garbage", "malformed"),
        (lambda: token(exp_in=1.2), "expires before the current one"),
    ],
)
@pytest.mark.gen_test(timeout=15)
async def test_refused_refresh_changes_nothing_and_expiry_still_closes(connect, core, bad, fragment):
    client = await connect("acme", token=token(exp_in=3))
    await client.expect("Welcome")
    await client.send({"Refresh": {"token": bad()}})
    error = await client.expect("Error")
    assert error["code"] == "refresh_refused" and fragment in error["message"]
    closed = await client.closed(timeout=5)
    assert closed.code == 1008
    await wait_for(lambda: core.limits.total == 0)


@pytest.mark.settings(jwt_secret=SECRET)
@pytest.mark.gen_test(timeout=15)
async def test_sse_stream_ends_at_expiry(http_url, core):
    stream = await SSEClient.open(http_url, "acme", token=token(exp_in=1.5))
    try:
        await stream.expect("Welcome")
        response = await stream.ended(timeout=5)
        assert response.code == 200
        await wait_for(lambda: core.hub.connection_count() == 0 and core.limits.total == 0)
    finally:
        stream.close()


@pytest.mark.gen_test
async def test_refresh_without_authentication_is_accepted(connect):
    client = await connect("acme")
    await client.expect("Welcome")
    await client.send({"Refresh": {"token": "anything"}})
    assert await client.expect("Refreshed") == {"expires_at": None}


# -- the admin token (the dashboard) ---------------------------------------------------------------


@pytest.mark.settings(jwt_secret=SECRET, admin_token=ADMIN)
@pytest.mark.gen_test
async def test_admin_token_in_the_header_subscribes_to_any_tenant(server_port, http_url, core):
    for tenant in ("acme", "globex"):
        (
            await expect_welcome(
                server_port, f"tenant_id={tenant}", headers=f"Authorization: Bearer {ADMIN}\r\n", tenant=tenant
            )
        ).close()
    stream = await SSEClient.open(http_url, "globex", headers={"Authorization": f"Bearer {ADMIN}"})
    try:
        assert (await stream.expect("Welcome"))["tenant_id"] == "globex"
    finally:
        stream.close()
    # Never in a URL, and nothing like it passes.
    await expect_refused(server_port, f"tenant_id=acme&token={ADMIN}", 401, "malformed")
    await expect_refused(server_port, "tenant_id=acme", 401, "malformed", headers=f"Authorization: Bearer {ADMIN}x\r\n")


# -- the hook ---------------------------------------------------------------------------------------


class Gatekeeper:
    """A third-party ``cfgpush_authorize``: decides tenant "gated" itself, leaves the rest to the built-in."""

    def __init__(self):
        self.calls = []

    @hookimpl
    def cfgpush_authorize(self, settings, request, tenant_id, token):
        self.calls.append((tenant_id, token))
        if tenant_id == "gated":
            return Decision.allow() if token == "letmein" else Decision.deny(403, "the gatekeeper says no")
        if tenant_id == "boom":
            raise RuntimeError("the plugin broke")
        return None


@pytest.fixture
def extra_plugins():
    return [("gatekeeper", Gatekeeper())]


@pytest.mark.settings(jwt_secret=SECRET)
@pytest.mark.gen_test
async def test_cfgpush_authorize_plugin_runs_first_and_none_falls_through(server_port, core):
    gatekeeper = core.pm.get_plugin("gatekeeper")
    (await expect_welcome(server_port, "tenant_id=gated&token=letmein", tenant="gated")).close()
    await expect_refused(server_port, "tenant_id=gated&token=nope", 403, "the gatekeeper says no")
    (await expect_welcome(server_port, f"tenant_id=acme&token={token()}")).close()  # the built-in JWT check
    await expect_refused(server_port, "tenant_id=acme&token=nope", 401, "malformed")
    await expect_refused(server_port, "tenant_id=boom&token=x", 503, "authorization is unavailable")
    assert ("gated", "letmein") in gatekeeper.calls and ("acme", "nope") in gatekeeper.calls


@pytest.mark.settings(jwt_secret=SECRET, disabled_plugins=("jwt",))
@pytest.mark.gen_test
async def test_without_the_builtin_a_configured_key_fails_closed(server_port, core):
    assert not core.pm.has_plugin("jwt")
    await expect_refused(server_port, f"tenant_id=acme&token={token()}", 401, "no authorization plugin answered")


@pytest.mark.gen_test
async def test_authentication_off_lets_everyone_in_as_before(server_port):
    (await expect_welcome(server_port, "tenant_id=acme")).close()
    (await expect_welcome(server_port, "tenant_id=acme&token=whatever")).close()


# -- origins ----------------------------------------------------------------------------------------


@pytest.mark.settings(
    jwt_secret=SECRET, allowed_origins=("https://app.example.com", "*.trusted.example", "http://*.plain.example")
)
@pytest.mark.parametrize(
    "origin, fetch_site, status",
    [
        ("https://app.example.com", "cross-site", 101),
        ("https://app.example.com:443", "cross-site", 101),
        ("http://app.example.com", "cross-site", 403),  # the scheme is part of an exact origin
        ("https://a.trusted.example", "same-site", 101),
        ("https://b.c.trusted.example", "cross-site", 101),
        # issue 18 item 9: a pattern without a scheme admits https only
        ("http://b.c.trusted.example", "cross-site", 403),
        ("http://x.trusted.example", None, 403),
        ("https://x.trusted.example:443", None, 101),
        # a pattern admits the scheme it names, and only that one
        ("http://x.plain.example", "cross-site", 101),
        ("https://x.plain.example", "cross-site", 403),
        ("https://trusted.example", "cross-site", 403),  # *. means a subdomain
        ("https://eviltrusted.example", "cross-site", 403),
        ("https://a.trusted.example.evil.net", "cross-site", 403),
        ("https://evil.example", "cross-site", 403),
        ("null", "cross-site", 403),
        ("https://evil.example", None, 403),
    ],
)
@pytest.mark.gen_test
async def test_cross_site_websocket_is_refused_even_with_a_valid_token(server_port, origin, fetch_site, status):
    headers = f"Origin: {origin}\r\n" + (f"Sec-Fetch-Site: {fetch_site}\r\n" if fetch_site else "")
    query = f"tenant_id=acme&token={token()}"
    if status == 101:
        (await expect_welcome(server_port, query, headers=headers)).close()
    else:
        assert await expect_refused(server_port, query, 403, "Origin not allowed", headers=headers) == {
            "error": "Origin not allowed"
        }


@pytest.mark.settings(jwt_secret=SECRET)
@pytest.mark.gen_test
async def test_same_origin_is_always_allowed(server_port):
    query = f"tenant_id=acme&token={token()}"
    (await expect_welcome(server_port, query, headers=f"Origin: http://127.0.0.1:{server_port}\r\n")).close()
    (
        await expect_welcome(server_port, query, headers="Origin: https://x.example\r\nSec-Fetch-Site: same-origin\r\n")
    ).close()
    (await expect_welcome(server_port, query)).close()  # no Origin: not a browser


@pytest.mark.settings(allowed_origins=("https://app.example.com",))
@pytest.mark.gen_test
async def test_sse_cross_origin(http_client, http_url, core):
    refused = await http_client.fetch(
        f"{http_url}/events?tenant_id=acme",
        raise_error=False,
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert (refused.code, json.loads(refused.body)) == (403, {"error": "Origin not allowed"})
    stream = await SSEClient.open(
        http_url, "acme", headers={"Origin": "https://app.example.com", "Sec-Fetch-Site": "cross-site"}
    )
    try:
        await stream.expect("Welcome")
        assert stream.headers["access-control-allow-origin"] == "https://app.example.com"
    finally:
        stream.close()


@pytest.mark.parametrize(
    "text, shown",
    [
        ("https://App.Example.com/", "https://app.example.com"),
        ("https://app.example.com:443", "https://app.example.com"),
        ("http://localhost:3000", "http://localhost:3000"),
        ("*.example.com", "*.example.com"),
        ("https://*.example.com:8443", "https://*.example.com:8443"),
    ],
)
def test_origin_patterns_parse(text, shown):
    assert parse_origin(text) == shown


@pytest.mark.parametrize(
    "text",
    [
        "*",
        "*.com",
        "app.example.com",
        "ftp://x.example",
        "https://a.example/path",
        "https://a*.example.com",
        "https://x.example:99999",
        "",
    ],
)
def test_bad_origin_patterns_are_refused(text):
    with pytest.raises(ValueError):
        parse_origin(text)


def test_origin_matching_edge_cases():
    assert origin_allowed("https://a.example.com", ["*.example.com"])
    assert not origin_allowed("http://x.example.com", ["*.example.com"])  # https only without a scheme
    assert origin_allowed("http://x.example.com", ["http://*.example.com"])
    assert origin_allowed("https://a.example.com", ["*.example.com:443"])
    assert not origin_allowed("https://a.example.com:8443", ["*.example.com"])
    assert origin_allowed("https://a.example.com:8443", ["*.example.com:8443"])
    assert not origin_allowed("https://example.com", ["*.example.com"])
    assert not origin_allowed("javascript://a.example.com", ["*.example.com"])
    assert not origin_allowed("https://a.example.com@evil.net", ["*.example.com"])


# -- hosts (DNS rebinding, issue 18 item 11) --------------------------------------------------------

UPGRADE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
)


async def raw_request(
    port: int,
    target: str,
    host: str | None,
    headers: str = "",
    method: str = "GET",
    body: bytes = b"",
    version: str = "HTTP/1.1",
) -> tuple[int, dict | bytes | None]:
    """One request with the Host header the test names (None: none at all); status and body
    (parsed when it is JSON)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        head = f"{method} {target} {version}\r\n" + (f"Host: {host}\r\n" if host is not None else "") + headers
        if body:
            head += f"Content-Length: {len(body)}\r\n"
        writer.write(head.encode("latin-1") + b"\r\n" + body)
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status = int(response.split(b" ", 2)[1])
        length = [
            int(line.split(b":")[1]) for line in response.split(b"\r\n") if line.lower().startswith(b"content-length:")
        ]
        data = await asyncio.wait_for(reader.readexactly(length[0]), 5) if length else b""
        if b"application/json" in response.lower():
            return status, json.loads(data)
        return status, data or None
    finally:
        writer.transport.abort()


def rebinding_page(host: str) -> str:
    """What a DNS-rebinding page's WebSocket sends besides ``Host: <host>``: the same as Origin."""
    return f"Origin: http://{host}\r\n"


@pytest.mark.settings(jwt_secret=SECRET)
@pytest.mark.gen_test
async def test_without_allowed_hosts_a_rebinding_page_is_same_origin(server_port):
    """Why --allowed-host exists: Origin equals Host, so every Origin check passes."""
    host = f"evil.example:{server_port}"
    status, _ = await raw_request(
        server_port, f"/ws?tenant_id=acme&token={token()}", host, UPGRADE + rebinding_page(host)
    )
    assert status == 101


HOSTS = ("cfgpush.example.com", "*.tenants.example", "127.0.0.1")


@pytest.mark.settings(
    jwt_secret=SECRET, admin_token=ADMIN, publish_token="host-test-publish-token", allowed_hosts=HOSTS
)
@pytest.mark.parametrize(
    "host, served",
    [
        ("cfgpush.example.com", True),
        ("CFGPUSH.Example.com.:{port}", True),  # case, the root's dot and any port
        ("a.tenants.example:443", True),
        ("127.0.0.1:{port}", True),
        ("evil.example:{port}", False),  # the rebinding page
        ("tenants.example", False),  # *. means a subdomain
        ("cfgpush.example.com.evil.example", False),
        ("evilcfgpush.example.com", False),
        ("[::1]:{port}", False),
        ("localhost:{port}", False),
        (None, False),  # HTTP/1.0 without Host
    ],
)
@pytest.mark.gen_test
async def test_allowed_hosts_refuse_other_hosts_on_every_endpoint_but_health(server_port, core, host, served):
    host = host.format(port=server_port) if host else None
    version = "HTTP/1.1" if host else "HTTP/1.0"
    origin = rebinding_page(host) if host else ""  # the page's own name, as a rebinding page sends
    admin = f"Authorization: Bearer {ADMIN}\r\n"
    publish_body = json.dumps({"tenant_id": "acme", "change_type": "modified", "path": "h.json"}).encode()
    requests = {
        "ws": (f"/ws?tenant_id=acme&token={token()}", UPGRADE + origin, "GET", b"", 101),
        "sse": (f"/events?tenant_id=acme&token={token()}", "Connection: close\r\n", "GET", b"", 200),
        "tenant": ("/api/v1/tenants/acme", admin, "GET", b"", 200),
        "tenants": ("/api/v1/tenants", admin, "GET", b"", 200),
        "metrics": ("/metrics", admin, "GET", b"", 200),
        "publish": (
            "/api/v1/events",
            "Authorization: Bearer host-test-publish-token\r\nContent-Type: application/json\r\n",
            "POST",
            publish_body,
            202,
        ),
    }
    for name, (target, headers, method, body, ok) in requests.items():
        status, answer = await raw_request(server_port, target, host, headers, method, body, version)
        if served:
            assert status == ok, (name, status, answer)
        else:
            assert status == 421, (name, status, answer)
            assert answer == {
                "error": "this server does not answer for the host named in the Host header (--allowed-host)"
            }, name
    # Health and readiness answer whatever the Host: orchestrators probe by address.
    for target in ("/healthz", "/readyz"):
        assert (await raw_request(server_port, target, host, version=version))[0] == 200
    await wait_for(lambda: core.limits.total == 0)
    assert core.hub.connection_count() == 0


@pytest.mark.parametrize(
    "text, shown",
    [
        ("cfgpush.example.com", "cfgpush.example.com"),
        ("CFGPUSH.example.com.", "cfgpush.example.com"),
        ("*.example.com:8443", "*.example.com:8443"),
        ("10.0.0.5", "10.0.0.5"),
        ("[::1]:7945", "[::1]:7945"),
    ],
)
def test_allowed_hosts_parse(text, shown):
    assert parse_hosts(text) == (shown,)


@pytest.mark.parametrize(
    "text",
    [
        "*",
        "*.com",
        "https://cfgpush.example.com",
        "a.example.com/path",
        "user@a.example",
        "a.example.com:99999",
        "a*.example.com",
    ],
)
def test_bad_allowed_hosts_are_refused(text):
    with pytest.raises(ValueError):
        parse_hosts(text)


# -- tokens never reach a log -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, shown",
    [
        ("/ws?tenant_id=acme&token=abc.def.ghi", "/ws?tenant_id=acme&token=<redacted>"),
        ("/ws?%74oken=abc&access_token=x", "/ws?%74oken=<redacted>&access_token=<redacted>"),
        ("/ws?tenant_id=acme", "/ws?tenant_id=acme"),
        ("/ws?token", "/ws?token=<redacted>"),
        ("/ws?password=x&tenant_id=acme", "/ws?password=<redacted>&tenant_id=acme"),
        ("redis://:pw@cache:6379/0", "redis://:<redacted>@cache:6379/0"),
        ("redis://user:p@ss@cache/0", "redis://user:<redacted>@cache/0"),  # urlsplit's reading: the last @
        ("rediss://cache/0", "rediss://cache/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        (
            "postgresql://app:pw-secret@db/cfg?password=again&sslmode=require",
            "postgresql://app:<redacted>@db/cfg?password=<redacted>&sslmode=require",
        ),
        ("host=db password=s3cret user=app", "host=db password=<redacted> user=app"),
        ("host=db password='a quoted secret' user=app", "host=db password=<redacted> user=app"),
    ],
)
def test_one_redaction_helper_for_logs_and_printed_settings(text, shown):
    assert redact(text) == shown


@pytest.mark.settings(jwt_secret=SECRET)
@pytest.mark.gen_test
async def test_tokens_are_not_in_access_or_error_logs(server_port, core, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    good, bad = token(), token("globex")
    (await expect_welcome(server_port, f"tenant_id=acme&token={good}")).close()
    await expect_refused(server_port, f"tenant_id=acme&token={bad}", 403, "not for this tenant")

    def explode(*args):
        raise RuntimeError("limits broke")

    monkeypatch.setattr(core.limits, "acquire", explode)
    got, _, ws = await status_of(server_port, f"tenant_id=acme&token={good}")
    ws.close()
    assert got == 500
    await wait_for(lambda: "Uncaught exception" in caplog.text)
    assert "token=<redacted>" in caplog.text
    for secret in (good, bad, SECRET, good.split(".")[2]):
        assert secret not in caplog.text


MALFORMED = [  # (header line, what the log keeps); each refused by Tornado's own parser
    ("Authorization: Bearer {token}\x01", "Invalid header value (value withheld)"),
    ("Authorization: Bearer {token}\x7f", "Invalid header value (value withheld)"),
    ("X-Api-Key: {token}\x00", "Invalid header value (value withheld)"),
    ("Transfer-Encoding: {token}", "Unsupported Transfer-Encoding (value withheld)"),
    ("Content-Length: {token}", "Only integer Content-Length is allowed (value withheld)"),
    ("{token}\x01: x", "Invalid header name (value withheld)"),
]


@pytest.mark.gen_test(timeout=120)
async def test_a_malformed_header_puts_no_token_in_the_log(start, config_dir):
    """issue 18 item 11: ``Authorization: Bearer <admin token>\\x01`` made Tornado log
    "Invalid header value 'Bearer <token>\\x01'". The line stays, with the peer and the kind
    of error, without the value."""
    server = start("--port", "0", "--config-dir", str(config_dir), "--admin-token", ADMIN)
    port = int((await server.wait_log(LISTENING)).group(1))
    for line, kept in MALFORMED:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                f"GET /api/v1/tenants/acme HTTP/1.1\r\nHost: 127.0.0.1\r\n{line.format(token=ADMIN)}\r\n\r\n".encode(
                    "latin-1"
                )
            )
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 400")
        finally:
            writer.transport.abort()
        await server.wait_log(re.escape(f"Malformed HTTP message from 127.0.0.1: {kept}"))
    # An honest request after them is served, and the token was never written.
    response = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{port}/api/v1/tenants/acme", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert response.code == 200
    assert ADMIN not in server.text()


def test_describe_input_error_keeps_the_kind_of_error_only():
    assert describe_input_error("Invalid header value 'Bearer abc\\x01'") == "Invalid header value (value withheld)"
    assert describe_input_error("Malformed HTTP request line") == "Malformed HTTP request line"
    assert describe_input_error("Missing Host header") == "Missing Host header"
    assert describe_input_error("Something new: secret") == "Something new (value withheld)"
    assert describe_input_error("'secret' was odd") == "malformed request (value withheld)"


@pytest.mark.gen_test(timeout=120)
async def test_cli_jwt_secret_file_several_publish_tokens_and_no_token_in_the_log(
    start, config_dir, tmp_path, http_client
):
    secret_file = tmp_path / "jwt-secret"
    secret_file.write_text(SECRET + "\n")
    tokens_file = tmp_path / "publish-tokens"
    tokens_file.write_text("publisher-one-token\npublisher-two-token\n")
    server = start(
        "--port",
        "0",
        "--config-dir",
        str(config_dir),
        "--allowed-origin",
        "https://app.example.com",
        "--allowed-origin",
        "*.trusted.example",
        "--max-connections-per-ip",
        "50",
        CFGPUSH_JWT_SECRET_FILE=str(secret_file),
        CFGPUSH_PUBLISH_TOKEN_FILE=str(tokens_file),
    )
    port = int((await server.wait_log(LISTENING)).group(1))
    good = token()
    ws = await expect_welcome(
        port,
        f"tenant_id=acme&token={good}",
        headers="Origin: https://x.trusted.example\r\nSec-Fetch-Site: cross-site\r\n",
    )
    try:
        await expect_refused(
            port, f"tenant_id=acme&token={good}", 403, "Origin", headers="Origin: https://evil.example\r\n"
        )
        await expect_refused(port, f"tenant_id=acme&token={token('globex')}", 403, "not for this tenant")
        for publisher in ("publisher-one-token", "publisher-two-token"):
            response = await http_client.fetch(
                HTTPRequest(
                    f"http://127.0.0.1:{port}/api/v1/events",
                    method="POST",
                    headers={"Authorization": f"Bearer {publisher}", "Content-Type": "application/json"},
                    body=json.dumps({"tenant_id": "acme", "change_type": "modified", "path": publisher}),
                )
            )
            assert response.code == 202
            assert (await ws.read_json())["ConfigChanged"]["path"] == publisher
    finally:
        ws.close()
    await server.wait_log(r"403 GET /ws")
    text = server.text()
    for secret in (good, SECRET, "publisher-one-token", "publisher-two-token"):
        assert secret not in text
    assert '"jwt_secret": "<redacted>"' in text and '"publish_token": "<redacted>"' in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--jwt-secret", "short"], "at least 32 bytes"),
        (["--jwt-public-key", "/nonexistent.pem"], "cannot read"),
        (["--jwks", "/nonexistent.json"], "cannot read"),
        (["--jwt-algorithm", "none"], "must be one of HS256, RS256, ES256"),
        (["--allowed-origin", "*"], "allowed origin"),
        (["--jwt-secret", SECRET, "--jwt-algorithm", "RS256"], "needs --jwt-public-key"),
        (["--max-connections", "-1"], "max connections"),
    ],
)
def test_cli_refuses_bad_auth_settings(tmp_path, config_dir, args, message):
    import subprocess

    from tornado_cfgpush.testing import COMMAND, clean_env

    done = subprocess.run(
        COMMAND + ["--config-dir", str(config_dir), "--port", "0", *args],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 2 and "needs --jwt-public-key" in message:
        pytest.fail(f"exit {done.returncode}: {done.stderr}")
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert SECRET not in done.stderr

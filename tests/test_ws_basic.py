import pytest

from tornado_cfgpush.schemas import CHECKSUM_RE


@pytest.mark.gen_test
async def test_welcome_then_change(connect, config_dir):
    client = await connect("acme")
    welcome = await client.expect("Welcome")
    assert welcome == {"tenant_id": "acme", "last_event_id": None, "heartbeat_interval": 5, "protocol": 1}
    (config_dir / "acme" / "app.json").write_text('{"a": 2}')
    event = await client.expect("ConfigChanged")
    assert event["tenant_id"] == "acme"
    assert event["change_type"] == "modified"
    assert event["path"] == "app.json"
    assert CHECKSUM_RE.match(event["checksum"])
    assert event["source"] == "filesystem"
    assert event["event_id"].endswith("-1")
    assert event["timestamp"].endswith("Z")

"""Issue 5, item 5, the cases tests/test_filesystem_source.py does not already cover: a folder
link into another tenant, and a tenant folder that is a link to another tenant. Links are
followed only within their own tenant."""

from __future__ import annotations

import os

import pytest

from .fshelpers import QUIET, change, fs_source, nothing, subscribe


@pytest.mark.gen_test(timeout=30)
async def test_folder_link_into_another_tenant_is_not_followed(connect, config_dir, core):
    acme = await subscribe(connect, "acme")
    globex = await subscribe(connect, "globex")
    (config_dir / "globex" / "deep").mkdir()
    (config_dir / "globex" / "deep" / "secret.json").write_bytes(b'{"s": 1}')
    await change(globex)
    os.symlink(config_dir / "globex" / "deep", config_dir / "acme" / "theirs-dir")
    os.symlink("../globex", config_dir / "acme" / "theirs-root")
    await nothing(acme, timeout=QUIET + 0.1)
    (config_dir / "globex" / "deep" / "secret.json").write_bytes(b'{"s": 2}')
    event = await change(globex)
    assert (event["tenant_id"], event["path"]) == ("globex", "deep/secret.json")
    await nothing(acme)
    assert set(fs_source(core).manifest("acme")) == {"app.json"}


@pytest.mark.gen_test(timeout=30)
async def test_tenant_folder_linked_to_another_tenant_gets_nothing_of_it(connect, config_dir, core):
    os.symlink(config_dir / "acme", config_dir / "mirror")
    mirror = await subscribe(connect, "mirror")
    acme = await subscribe(connect, "acme")
    (config_dir / "acme" / "app.json").write_bytes(b'{"a": 2}')
    event = await change(acme)
    assert event["tenant_id"] == "acme"
    await nothing(mirror)
    assert not fs_source(core).manifest("mirror")

"""Drive the dashboard in headless Chromium and save a screenshot (docs/dashboard.png).

    .venv/bin/python scripts/dashboard_screenshot.py [--out docs/dashboard.png]

It serves a copy of examples/config with ``cfgpush-serve`` on a free port (admin token on),
opens two application pages that subscribe with ``/cfgpush.js`` (and a third whose ``onChange``
rejects), opens the dashboard, types the admin token, watches ``acme``, saves a few files and
waits until the applications have answered the newest event, saves a file the validation gate
(``--validate '*.json'``) refuses, and takes the picture once the dashboard lists both problems.

The browser tests (tests/test_browser.py) use the same functions: ``chromium()`` to start the
browser and ``capture_dashboard()`` for everything on the page, so the picture in the README is
made by the code path the tests prove.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# Debian's Chromium, headless, with nothing that calls home or needs a GPU or a sandbox.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parent.parent
WAIT_MS = 15_000

# Tests start clients of their own in the server's example page (/example.html, the README's
# quick start): a real page of the server's origin, as an application's would be. What their
# callbacks see is recorded for the tests to read.
HARNESS = """async () => {
  const { CfgPush } = await import("/cfgpush.js");
  window.CfgPush = CfgPush;
  window.clients = [];
  window.startClient = (tenantId, options = {}) => {
    const record = { events: [], resyncs: [], welcomes: [], statuses: [] };
    const { slowMs, failWith, ...rest } = options;
    record.push = new CfgPush(location.origin, {
      tenantId, ...rest,
      onChange: async (event) => {
        record.events.push(event);
        if (slowMs) await new Promise((resolve) => setTimeout(resolve, slowMs));
        if (failWith) throw new RangeError(failWith); // a rejected onChange: reported in the Ack
      },
      onResync: (resync) => { record.resyncs.push(resync); },
      onWelcome: (welcome) => { record.welcomes.push(welcome); },
      onStatus: (status) => {
        record.statuses.push({ state: status.state, transport: status.transport, delay: status.delay ?? null,
          reason: status.reason ?? null, at: performance.now() });
      },
    });
    window.clients.push(record);
    return window.clients.length - 1;
  };
}"""


@contextlib.asynccontextmanager
async def chromium(user_data_dir: Path, extra_args: Sequence[str] = ()) -> AsyncIterator[object]:
    """A fresh headless Chromium (Playwright's async API) with its own profile folder
    (``extra_args``: more command-line switches, e.g. ``--ignore-certificate-errors``)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=CHROMIUM,
            args=[*CHROMIUM_ARGS, *extra_args],
            headless=True,
            viewport={"width": 1200, "height": 540},
        )
        try:
            yield context
        finally:
            await context.close()


async def open_app_page(context, base_url: str, tenant: str | None = None):
    """The server's example page; with ``tenant`` it subscribes (the README's quick start),
    without it the test starts clients with ``start_client``."""
    page = await context.new_page()
    await page.goto(base_url + "/example.html" + (f"?tenant={tenant}" if tenant else ""))
    if tenant is None:
        await page.evaluate(HARNESS)
    return page


async def start_client(page, tenant_id: str, options: dict | None = None) -> int:
    """A ``CfgPush`` for ``tenant_id`` in ``page`` (from ``open_app_page`` without a tenant)."""
    return await page.evaluate("([t, o]) => window.startClient(t, o)", [tenant_id, options or {}])


async def capture_dashboard(
    context,
    base_url: str,
    *,
    admin_token: str,
    tenant: str,
    edits: Sequence[tuple[Path, str]],
    out: Path,
    apps: int = 2,
    failing: str | None = None,
    broken: tuple[Path, str] | None = None,
) -> dict:
    """Applications subscribe, the dashboard watches ``tenant``, ``edits`` are saved one by one
    (each waited for on the page), convergence is awaited, and the page is saved to ``out``.
    With ``failing``, one more application whose ``onChange`` rejects with that message (the
    dashboard lists it among the clients that could not apply); with ``broken``, a save the
    validation gate refuses (the server runs with ``--validate``), listed on the dashboard.

    Returns what the page shows: ``{"tenants": [...rows...], "events": [...], "convergence",
    "health", "stream", "invalid", "failures"}``.
    """
    from playwright.async_api import expect

    # Applications: the example page (the README's five lines), once per client.
    app_pages = [await open_app_page(context, base_url, tenant) for _ in range(apps)]
    for app in app_pages:
        await expect(app.locator("#state")).to_have_attribute("data-state", "open", timeout=WAIT_MS)
    if failing is not None:
        failing_page = await open_app_page(context, base_url)
        await start_client(failing_page, tenant, {"failWith": failing})
        await failing_page.wait_for_function("window.clients[0].push.state === 'open'", timeout=WAIT_MS)
        app_pages.append(failing_page)

    # The dashboard's Content-Security-Policy forbids eval: wait with locators, not functions.
    page = await context.new_page()
    await page.goto(base_url + "/")
    await expect(page.locator("body")).to_have_attribute("data-ready", "1", timeout=WAIT_MS)
    await page.fill("#token", admin_token)
    await page.click("#token-form button[type=submit]")
    row = page.locator(f'#tenants tbody tr[data-tenant="{tenant}"]')
    await row.wait_for(timeout=WAIT_MS)
    await row.click()
    await expect(page.locator("#stream-status")).to_have_attribute("data-state", "open", timeout=WAIT_MS)
    for count, (path, text) in enumerate(edits, 1):
        write_atomically(path, text)
        await expect(page.locator("#events li.event")).to_have_count(count, timeout=WAIT_MS)
    # Every application acknowledged the newest event, and the dashboard shows it.
    newest = await page.locator("#events li.event").first.get_attribute("data-event-id")
    convergence = page.locator("#convergence")
    if failing is None:
        await expect(convergence).to_have_text(f"{apps} of {apps} clients on {newest}", timeout=WAIT_MS)
        await expect(convergence).to_have_attribute("data-state", "converged", timeout=WAIT_MS)
    else:
        text = f"{apps} of {apps + 1} clients on {newest} · 1 failed"
        await expect(convergence).to_have_text(text, timeout=WAIT_MS)
        await expect(page.locator("#failures li")).to_have_count(1, timeout=WAIT_MS)
    if broken is not None:
        write_atomically(*broken)
        await expect(page.locator("#invalid li")).to_have_count(1, timeout=WAIT_MS)
        await expect(row.locator(".problems")).to_contain_text("refused", timeout=WAIT_MS)
    await expect(page.locator("#health")).to_have_attribute("data-state", "ok", timeout=WAIT_MS)
    out.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(out))
    shown = await page.evaluate("""() => ({
      tenants: [...document.querySelectorAll('#tenants tbody tr')].map(r => ({
        tenant: r.dataset.tenant, clients: r.querySelector('.clients').textContent,
        ws: r.querySelector('.ws').textContent, sse: r.querySelector('.sse').textContent,
        newest: r.querySelector('.newest').textContent, converged: r.querySelector('.converged').textContent})),
      events: [...document.querySelectorAll('#events li.event')].map(e => ({
        id: e.dataset.eventId, path: e.querySelector('.path').textContent,
        type: e.querySelector('.type').textContent, time: e.querySelector('.time').textContent,
        diff: e.querySelector('.diff') ? e.querySelector('.diff').textContent : null})),
      convergence: document.querySelector('#convergence').textContent,
      health: document.querySelector('#health').textContent,
      stream: document.querySelector('#stream-status').textContent,
      invalid: [...document.querySelectorAll('#invalid li')].map(li => li.textContent),
      failures: [...document.querySelectorAll('#failures li')].map(li => li.textContent),
      url: location.href,
    })""")
    await page.close()
    for app in app_pages:
        await app.close()
    return shown


def write_atomically(path: Path, text: str) -> None:
    """Save as editors do: a temporary file renamed over the original."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


# -- the script ------------------------------------------------------------------------------------


def _serve(config_dir: Path, admin_token: str) -> tuple[subprocess.Popen, str]:
    command = shutil.which("cfgpush-serve", path=str(Path(sys.executable).parent)) or "cfgpush-serve"
    proc = subprocess.Popen(
        [command, "--config-dir", str(config_dir), "--port", "0", "--log-level", "INFO", "--validate", "*.json"],
        env={**os.environ, "CFGPUSH_ADMIN_TOKEN": admin_token},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    for line in proc.stderr:
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if found:
            # Keep reading its log, so the pipe never fills and blocks it.
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, found.group(1)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("cfgpush-serve did not start")


async def _main(out: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix="cfgpush-shot-"))
    proc = None
    try:
        config = work / "config"
        shutil.copytree(ROOT / "examples" / "config", config)
        admin_token = "dashboard-demo-token"
        proc, base_url = _serve(config, admin_token)
        limits = json.loads((config / "acme" / "billing" / "limits.json").read_text())
        ui = json.loads((config / "acme" / "ui.json").read_text())
        edits = [
            (
                config / "acme" / "ui.json",
                json.dumps({**ui, "theme": "light", "banner": "Maintenance at 22:00"}, indent=2),
            ),
            (config / "acme" / "billing" / "limits.json", json.dumps({**limits, "burst": 50}, indent=2)),
            (config / "acme" / "features" / "search.toml", 'enabled = true\nengine = "v2"\n'),
        ]
        async with chromium(work / "profile") as context:
            # One application cannot apply the newest change, and a broken save is held back.
            broken = (config / "acme" / "billing" / "limits.json", '{"rate": 100, "burst": }')
            return await capture_dashboard(
                context,
                base_url,
                admin_token=admin_token,
                tenant="acme",
                edits=edits,
                out=out,
                failing="feature flag 'search' needs engine v1",
                broken=broken,
            )
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stderr.close()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args(argv)
    shown = asyncio.run(_main(args.out))
    print(f"saved {args.out}: {len(shown['events'])} events, {shown['convergence']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

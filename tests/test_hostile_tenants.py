"""A tenant's files are hostile input (issue #18): a tenant with write access to its own folder
only must not stop, stall or read another. Each test attacks a real server (pytest-tornado's
``http_server``) with real files the way the issue describes, while an honest tenant (globex)
keeps saving and checks it is served as usual.

What a tenant can and cannot do is in SECURITY.md ("Tenants' files").
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import hashlib
import json
import os
import threading
import time

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from tornado.httpclient import AsyncHTTPClient

from tornado_cfgpush import structured
from tornado_cfgpush.sources.filesystem import is_ignored_name

from .fshelpers import EXPECT, QUIET, change, fs_source, nothing, sha, subscribe

TIMEOUT = 60


async def honest_save(config_dir, client, value) -> float:
    """globex saves; returns how long its event took to arrive (printed, never asserted)."""
    started = time.perf_counter()
    data = json.dumps({"honest": value}).encode()
    (config_dir / "globex" / "app.json").write_bytes(data)
    event = await change(client)
    assert (event["tenant_id"], event["path"], event["checksum"]) == ("globex", "app.json", sha(data))
    return 1000 * (time.perf_counter() - started)


async def health_ms(http_url) -> float:
    started = time.perf_counter()
    response = await AsyncHTTPClient().fetch(f"{http_url}/healthz", request_timeout=30)
    assert response.code == 200
    return 1000 * (time.perf_counter() - started)


# -- names ---------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_a_name_that_is_not_utf8_is_skipped_for_its_tenant_only(connect, config_dir, core, http_url):
    """Landed main: ``evil/\\xff.json`` crashed the source for every tenant, for good."""
    (config_dir / "evil").mkdir()
    evil = await subscribe(connect, "evil")
    globex = await subscribe(connect, "globex")
    for round_ in range(3):
        with open(os.fsencode(config_dir / "evil") + b"/\xff%d.json" % round_, "wb") as f:
            f.write(b"{}")
        resync = await evil.expect("Resync", timeout=EXPECT)
        assert (resync["tenant_id"], resync["reason"]) == ("evil", "source_gap")
        print(
            f"\n[hostile] globex save during evil's bad names: {await honest_save(config_dir, globex, round_):.1f} ms"
        )
    await nothing(globex)
    assert core.runner.restarts["filesystem"] == 0
    assert core.metrics.rejected_events[("filesystem", "invalid_path")] == 3
    response = await AsyncHTTPClient().fetch(f"{http_url}/readyz")
    assert json.loads(response.body)["status"] == "ready"
    assert fs_source(core).manifest("evil") == {}  # nothing unsendable in a manifest
    late = await connect("evil", manifest=1)
    assert (await late.expect("Welcome"))["manifest"] == {}


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_a_long_legal_path_is_announced(connect, config_dir):
    """Landed main refused paths over 1 024 characters and dropped them silently; Linux allows
    4 095 bytes (each name 255): the rule is the same now (rules.path_error)."""
    acme = await subscribe(connect, "acme")
    folder = config_dir / "acme"
    parts = []
    for i in range(12):  # twelve folders of 200 bytes (é is two bytes): 2 400 bytes and more
        parts.append(f"{i:02d}" + "é" * 99)
    deep = folder.joinpath(*parts)
    deep.mkdir(parents=True)
    (deep / "x.json").write_bytes(b"{}")
    event = await change(acme)
    rel = "/".join(parts + ["x.json"])
    assert len(rel.encode()) > 2_400
    assert (event["change_type"], event["path"]) == ("created", rel)


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_control_characters_in_a_name_are_refused_visibly(connect, config_dir, core):
    acme = await subscribe(connect, "acme")
    (config_dir / "acme" / "new\nline.json").write_bytes(b"{}")
    assert (await acme.expect("Resync", timeout=EXPECT))["reason"] == "source_gap"
    await nothing(acme)


# -- keys and contents ------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_json_keys_with_control_characters_or_lone_surrogates_never_crash(connect, config_dir, core):
    """Landed main: each such save crashed the source, and every tenant got Resync."""
    evil = await subscribe(connect, "acme")
    globex = await subscribe(connect, "globex")
    target = config_dir / "acme" / "keys.json"
    target.write_bytes(b'{"a\\u0001b": 1, "\\ud800": 3}')
    created = await change(evil)
    assert created["change_type"] == "created"
    for value in range(2, 5):
        target.write_bytes(b'{"a\\u0001b": %d, "\\ud800": %d}' % (value, value))
        event = await change(evil)
        assert event["change_type"] == "modified"
        # The lone surrogate cannot go on the wire: the event goes out without a diff, and says why.
        assert "diff" not in event and event["meta"]["diff_skipped"] == "keys_not_representable"
    await globex.expect_nothing(QUIET)  # no Resync for the others
    print(f"\n[hostile] globex save after evil's keys: {await honest_save(config_dir, globex, 1):.1f} ms")
    assert core.runner.restarts["filesystem"] == 0


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_a_yaml_alias_bomb_does_not_freeze_the_server(connect, config_dir, core, http_url):
    """Landed main: 354 bytes of nested aliases saved twice held the loop 14 s; another
    tenant's 20 clients were dropped by the heartbeat."""
    if structured.yaml is None:
        pytest.fail("PyYAML is needed for this test (pip install -e '.[test]')")
    lines = ["a0: &a0 [x, x, x, x]"] + [
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)
    ]
    bomb = config_dir / "acme" / "bomb.yaml"
    evil = await subscribe(connect, "acme")
    globex = [await subscribe(connect, "globex") for _ in range(20)]
    for round_ in range(2):
        bomb.write_text("\n".join(lines) + f"\nround: {round_}\n")
        event = await change(evil)
        assert event["path"] == "bomb.yaml" and "diff" not in event
        if round_:
            assert event["meta"]["diff_skipped"] == structured.TOO_MANY_NODES
        print(f"\n[hostile] /healthz after the bomb: {await health_ms(http_url):.1f} ms")
    started = time.perf_counter()
    (config_dir / "globex" / "app.json").write_text('{"g": "after"}')
    for client in globex:  # every one still connected, and served
        assert (await change(client))["tenant_id"] == "globex"
    print(f"[hostile] globex's 20 clients served {1000 * (time.perf_counter() - started):.1f} ms after the save")


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_a_huge_sparse_file_is_hashed_off_the_loop_and_holds_no_other_tenant(
    connect, config_dir, http_url, tmp_path
):
    """Landed main: a sparse 4 GiB file was checksummed on the event loop (9.4 s). Here it is
    hashed by the worker's slow lane: the server answers at once, another tenant's save
    overtakes it, and its event still arrives, with the right checksum."""
    evil = await subscribe(connect, "acme")
    globex = await subscribe(connect, "globex")
    big = config_dir / "acme" / "huge.bin"
    size = 1024 * 1024 * 1024  # 1 GiB of holes: no disk used, a few seconds of hashing
    with open(big, "wb") as f:
        f.truncate(size)
    print(f"\n[hostile] /healthz while hashing: {await health_ms(http_url):.1f} ms")
    print(f"[hostile] globex save while hashing: {await honest_save(config_dir, globex, 'during'):.1f} ms")
    event = await change(evil, timeout=120)
    digest = hashlib.sha256()
    zeros = bytes(1024 * 1024)
    for _ in range(size // len(zeros)):
        digest.update(zeros)
    assert (event["path"], event["checksum"]) == ("huge.bin", "sha256:" + digest.hexdigest())


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_a_fifo_never_hangs_the_reader(connect, config_dir):
    acme = await subscribe(connect, "acme")
    os.mkfifo(config_dir / "acme" / "pipe.json")
    (config_dir / "acme" / "after.json").write_bytes(b"{}")
    event = await change(acme)
    assert event["path"] == "after.json"
    await nothing(acme)


# -- links -----------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_a_hard_link_to_another_tenants_file_is_not_read(connect, config_dir, core):
    """Landed main: a hard link in acme's folder to globex's file put globex's checksum in acme's
    manifest."""
    acme = await subscribe(connect, "acme")
    os.link(config_dir / "globex" / "app.json", config_dir / "acme" / "theirs.json")
    await nothing(acme, timeout=QUIET + 0.1)
    globex_sum = sha((config_dir / "globex" / "app.json").read_bytes())
    assert globex_sum not in fs_source(core).manifest("acme").values()
    # and a fresh scan (a restarted server) does not read it either
    late = await connect("acme", manifest=1)
    assert globex_sum not in (await late.expect("Welcome"))["manifest"].values()


def _renameat2_exchange():
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        pytest.fail("this C library has no renameat2 (glibc 2.28 or newer has it)")
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    AT_FDCWD, RENAME_EXCHANGE = -100, 2

    def exchange(a, b) -> None:
        if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return exchange


@pytest.mark.gen_test(timeout=TIMEOUT)
async def test_a_symlink_swap_race_never_hands_acme_globex_content(connect, config_dir, core):
    """Landed main checked ``realpath()`` and then opened the path by name again: acme swapping
    its folder ``d`` with a link to ``../globex/g`` in a loop got globex's checksums and key
    names into its events (37 of 285) and its manifest. Here every file is opened below a
    descriptor of its tenant's folder, one component at a time, never following a link."""
    exchange = _renameat2_exchange()
    acme_dir, globex_dir = config_dir / "acme", config_dir / "globex"
    acme = await subscribe(connect, "acme")
    globex = await subscribe(connect, "globex")
    (globex_dir / "g").mkdir()
    secret_contents = set()
    for i in range(5):
        data = json.dumps({f"globex_secret_key_{i}": i}).encode()
        (globex_dir / "g" / f"f{i}.json").write_bytes(data)
        secret_contents.add(sha(data))
    (acme_dir / "d").mkdir()
    for i in range(5):
        (acme_dir / "d" / f"f{i}.json").write_bytes(json.dumps({"acme_own": i}).encode())
    os.symlink("../globex/g", acme_dir / "swap")
    for client in (acme, globex):  # the files made above, announced first
        for _ in range(5):
            await change(client)
    stop = threading.Event()
    swaps = 0

    def swapper() -> None:
        nonlocal swaps
        while not stop.is_set():
            exchange(acme_dir / "d", acme_dir / "swap")
            swaps += 1

    real_d = os.open(acme_dir / "d", os.O_RDONLY | os.O_DIRECTORY)  # acme's own folder, wherever it is named

    def writer() -> None:  # acme writes its own files meanwhile (never through the link)
        i = 0
        while not stop.is_set():
            fd = os.open(f"f{i % 5}.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=real_d)
            os.write(fd, json.dumps({"acme_own": i}).encode())
            os.close(fd)
            i += 1
            time.sleep(0.002)  # wait-ok: a steady writer, not a busy loop

    threads = [threading.Thread(target=swapper), threading.Thread(target=writer)]
    for thread in threads:
        thread.start()
    received: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 8
    try:
        while loop.time() < deadline:
            try:
                received.append(await acme.raw(timeout=0.5))
            except TimeoutError:
                pass
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        os.close(real_d)
    # Whatever d is when things settle, drain what is still on its way.
    await asyncio.sleep(0.5)  # wait-ok: the last swaps' events to arrive
    while True:
        try:
            received.append(await acme.raw(timeout=1.0))
        except TimeoutError:
            break
    print(f"\n[hostile] {swaps} swaps, {len(received)} messages to acme")
    assert swaps > 1000 and received
    text = "\n".join(received)
    for checksum in secret_contents:
        assert checksum not in text
    assert "globex_secret_key" not in text
    manifest = fs_source(core).manifest("acme")
    assert not secret_contents & set(manifest.values())
    late = await connect("acme", manifest=1)
    assert not secret_contents & set((await late.expect("Welcome"))["manifest"].values())
    # The flood of acme's renames never made globex's clients reload.
    await globex.expect_nothing(0.2)


# -- a hypothesis family: any name, any content --------------------------------------------------

FILE_EXAMPLES = max(20, int(os.environ.get("CFGPUSH_FUZZ_EXAMPLES", "300")) // 3)
FILES = hsettings(
    max_examples=FILE_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
name_bytes = (
    st.one_of(
        st.binary(min_size=1, max_size=40),  # any bytes: invalid UTF-8, control characters, ...
        st.text(min_size=1, max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.sampled_from(
            [b"\xff.json", b"a\nb.json", b"a\\b.json", b"x" * 255, b"\xc3\xa9t\xc3\xa9.yaml", b"a\rb.toml"]
        ),
    )
    .map(lambda b: b.replace(b"/", b"_").replace(b"\x00", b"_"))
    .filter(lambda b: b not in (b".", b".."))
)
json_key = st.one_of(st.text(max_size=8), st.sampled_from(["\\ud800", "a\\u0001b", "~/", "\\u0000"]))
json_doc = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=20,
)
content = st.one_of(
    json_doc.map(lambda d: json.dumps(d).encode()),
    st.lists(st.tuples(json_key, st.integers()), max_size=4).map(
        lambda kv: ("{" + ", ".join(f'"{k}": {v}' for k, v in kv) + "}").encode()
    ),  # raw escapes in keys
    st.binary(max_size=200),
    st.sampled_from([b"a: &a [*a]", b"a: &x [1]\nb: *x\n", b"{", b"\xff\xfe", b"[" * 2000]),
)
extension = st.sampled_from([".json", ".yaml", ".toml", ".txt", ""])


def test_any_name_and_any_content_of_one_tenant_reach_its_clients_only(io_loop, connect, config_dir, core):
    """Whatever one tenant writes in its folder (any bytes as a name, any bytes as content), its
    own clients get the change or a Resync, the other tenant gets nothing, and nothing crashes."""
    evil_dir = os.fsencode(config_dir / "acme")

    async def open_clients():
        return await subscribe(connect, "acme"), await subscribe(connect, "globex")

    evil, globex = io_loop.run_sync(open_clients)
    tried = 0

    @FILES
    @given(name=name_bytes, ext=extension, data=content)
    def one(name, ext, data):
        nonlocal tried
        tried += 1
        path = evil_dir + b"/" + b"%d-" % tried + name[:240] + ext.encode()  # a new file each time, under 255 bytes
        with open(path, "wb") as f:
            f.write(data)
        if is_ignored_name(os.fsdecode(path.rsplit(b"/", 1)[1])):
            return  # an editor's temporary or backup name: never configuration, no event

        async def check():
            message = json.loads(await evil.raw(timeout=EXPECT))
            kind, body = next(iter(message.items()))
            assert body["tenant_id"] == "acme", message
            if kind == "ConfigChanged":
                assert os.fsencode(body["path"]) == path[len(evil_dir) + 1 :], (path, message)
            else:  # a name that cannot be announced: its clients reload
                assert kind == "Resync" and body["reason"] == "source_gap", message

        io_loop.run_sync(check, timeout=EXPECT + 5)

    one()
    io_loop.run_sync(lambda: globex.expect_nothing(QUIET))
    assert core.runner.restarts["filesystem"] == 0
    print(f"\n[hostile] {tried} files of any name and content written by one tenant")


# -- the start-up scan ----------------------------------------------------------------------------


def _hostile_tree(root) -> None:
    """Every kind of name a tenant can make, there before the server starts."""
    acme, globex = root / "acme", root / "globex"
    (acme / "sub" / "deep").mkdir(parents=True)
    (globex / "g").mkdir(parents=True)
    (root / "elsewhere").mkdir()
    (acme / "app.json").write_bytes(b'{"a": 1}')
    (acme / "sub" / "deep" / "d.yaml").write_bytes(b"d: 1\n")
    (globex / "app.json").write_bytes(b'{"g": 1}')
    (globex / "g" / "secret.json").write_bytes(b'{"secret": 1}')
    os.symlink("app.json", acme / "alias.json")  # inside: followed
    os.symlink("../globex/app.json", acme / "theirs.json")  # out of the tenant
    os.symlink(globex / "app.json", acme / "abs.json")
    os.symlink("missing.json", acme / "dangling.json")
    os.symlink("../globex/g", acme / "linked-dir")  # a link to a folder: not walked
    os.symlink("sub", acme / "inner-dir")  # even inside
    os.mkfifo(acme / "pipe.json")
    os.link(globex / "g" / "secret.json", acme / "hard.json")
    os.symlink("globex", root / "linked-tenant")
    os.symlink("globex/app.json", root / "top.json")
    (acme / ".hidden.json").write_bytes(b"{}")
    (acme / "app.json.swp").write_bytes(b"{}")
    (root / "elsewhere" / "x.json").write_bytes(b"{}")


def test_the_start_up_scan_lists_and_opens_by_the_rules_of_a_change(tmp_path):
    """The scan opens each file in the folder the walk found it in (``Tree.open_found``), not
    by its path (``Tree.open``, what a change does): what it lists is what ``os.fwalk`` lists,
    and every file reads as the same file, or is refused for the same reason."""
    from tornado_cfgpush.sources.filesystem.tree import Refused, Tree

    root = tmp_path / "config"
    root.mkdir()
    _hostile_tree(root)
    tree = Tree(str(root))
    try:
        fwalked = []
        for folder, dirs, files, _ in os.fwalk(".", dir_fd=tree.root_fd, follow_symlinks=False):
            dirs[:] = [d for d in dirs if not is_ignored_name(d)]
            prefix = "" if folder == "." else os.path.normpath(folder) + "/"
            fwalked += [prefix + name for name in files if not is_ignored_name(name)]
        assert list(tree.walk()) == fwalked
        assert not {"acme/linked-dir", "acme/linked-dir/secret.json", "linked-tenant/app.json"} & set(fwalked)

        def outcome(open_it, *args):
            try:
                opened = open_it(*args)
            except Refused as why:
                return f"refused: {why}"
            if opened is None:
                return None
            os.close(opened.fd)
            return opened.info.st_ino

        outcomes = {}
        for key, folder_fd, name in tree.found():
            outcomes[key] = outcome(tree.open_found, key, folder_fd, name)
            assert outcomes[key] == outcome(tree.open, key), key
        inode = os.stat(root / "acme" / "app.json").st_ino
        assert outcomes["acme/app.json"] == outcomes["acme/alias.json"] == inode
        assert outcomes["acme/pipe.json"] is None
        for key in ("acme/theirs.json", "acme/abs.json", "acme/hard.json", "top.json"):
            assert str(outcomes[key]).startswith("refused"), key
    finally:
        tree.close()


class TestHostileNamesThereAtStart:
    @pytest.fixture
    def config_dir(self, tmp_path):
        root = tmp_path / "config"
        root.mkdir()
        _hostile_tree(root)
        return root

    @pytest.mark.gen_test(timeout=30)
    async def test_the_start_up_scan_announces_only_what_a_change_would(self, connect, core):
        await subscribe(connect, "acme")
        source = fs_source(core)
        assert source.manifest("acme") == {
            "app.json": sha(b'{"a": 1}'),
            "alias.json": sha(b'{"a": 1}'),
            "sub/deep/d.yaml": sha(b"d: 1\n"),
        }
        assert source.manifest("globex") == {"app.json": sha(b'{"g": 1}')}
        assert set(source.tenants()) == {"acme", "globex", "elsewhere"}

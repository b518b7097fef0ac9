#!/usr/bin/env python3
"""The walls between tornado_cfgpush's parts, checked over the package's imports (docs/architecture.md).

Run from the repository's root: ``python .ci/check_imports.py``; exit status 1 and one line
per broken wall otherwise. ``.ci/run`` runs it before the tests, and so does
``tests/test_architecture.py``.

A short script over ``ast`` rather than import-linter: it needs nothing installed; it checks
cycles over every module of the package at once (import-linter's acyclic contract looks at the
siblings of one package at a time); and a wall may name a standard-library module (the worker
process must not load asyncio) as easily as a distribution.

Every import statement counts, wherever it is: at the top, inside a function (a lazy import
is still a dependency) and under ``if TYPE_CHECKING:``. Walls are of two kinds:

* design walls (``RUNTIME = False``): who may know whom, type-only imports included; the
  cycle check is one of them;
* load walls (``RUNTIME = True``): what a module makes the interpreter load, so imports
  under ``if TYPE_CHECKING:`` (which load nothing) are left out, and importing ``a.b.c``
  also loads the packages ``a`` and ``a.b``.

A wall holds transitively: ``X never imports Y`` means no chain of imports leads from X to Y.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "tornado_cfgpush"


@dataclass(frozen=True)
class Wall:
    """Modules matching ``sources`` (less those matching ``exempt``) must not reach modules
    matching ``forbidden``. A name matches a module when it is the module or one of its
    packages (``tornado`` matches ``tornado.web``).
    """

    name: str
    sources: tuple[str, ...]
    forbidden: tuple[str, ...]
    runtime: bool = False
    exempt: tuple[str, ...] = ()
    # Imports (importer, imported) the wall does not follow; each says why where it is listed.
    ignore: tuple[tuple[str, str], ...] = ()


P = PACKAGE
PLUGIN_MODULES = ("cfgpush_ticker", "cfgpush_postgres", "cfgpush_webhook")  # plugins/*/ (checked below)

WALLS = (
    Wall("sources never import handlers or the hub", (f"{P}.sources",), (f"{P}.handlers", f"{P}.hub", f"{P}.app")),
    Wall(
        "schemas and plugins never import Tornado",
        (f"{P}.schemas", f"{P}.plugins", f"{P}.hookspecs"),
        ("tornado",),
        runtime=True,
    ),
    Wall(
        "the hub never imports marshmallow or plugins",
        (f"{P}.hub",),
        ("marshmallow", f"{P}.schemas", f"{P}.plugins", f"{P}.hookspecs", f"{P}.auth", f"{P}.sources"),
        runtime=True,
    ),
    Wall(
        "handlers reach the broker only through its interface (broker/__init__.py)",
        (f"{P}.handlers",),
        (f"{P}.broker.memory", f"{P}.broker.redis", "redis"),
    ),
    Wall(
        "handlers see the service through ports.py, never app.py",
        (f"{P}.handlers", f"{P}.ports", f"{P}.metrics"),
        (f"{P}.app", f"{P}.cli"),
    ),
    Wall(
        "only app.py wires the handlers in",
        (P,),
        (f"{P}.handlers",),
        exempt=(f"{P}.handlers", f"{P}.app", f"{P}.cli", f"{P}.testing"),
    ),
    Wall("the package never imports scripts/ or plugins/", (P,), ("scripts", "bench", *PLUGIN_MODULES)),
    Wall("the package never imports its pytest plugin", (P,), (f"{P}.testing",), exempt=(f"{P}.testing",)),
    Wall(
        "the sans-I/O WebSocket core does no I/O",
        (f"{P}.ws.protocol", f"{P}.ws.frames", f"{P}.ws.deflate"),
        ("asyncio", "tornado", "socket"),
        runtime=True,
    ),
    Wall(
        "the filesystem worker process starts light: no Tornado, asyncio or marshmallow",
        (f"{P}.sources.filesystem.worker",),
        ("tornado", "asyncio", "marshmallow"),
        runtime=True,
        # The package loads the server's side (source.py) only when the server asks for it
        # (its __getattr__ and its hook), which the worker never does.
        ignore=((f"{P}.sources.filesystem", f"{P}.sources.filesystem.source"),),
    ),
)


# The parts from the bottom up (docs/architecture.md, "The parts"): a module imports only modules
# of its own layer or of the layers before it. A name is a module or a package of modules (the
# root package: itself only); the longest name that matches a module places it.
LAYERS: tuple[tuple[str, ...], ...] = tuple(
    tuple(f"{P}.{m}" if m else P for m in layer)
    for layer in (
        ("",),  # the package's face: hookimpl, EventSource, Emit
        (
            "rules",
            "settings",
            "closing",
            "events",
            "ws",
            "ws.frames",
            "ws.deflate",
            "structured",
            "redaction",
            "logs",
            "limits",
            "loop_health",
            "signals",
            "tls",
            "proxies",
            "proxy_protocol",
            "workerinfo",
            "content",
            "patching",
        ),
        ("ws.protocol",),
        ("ws.connection", "ws.iostream"),
        ("schemas", "gate"),
        ("broker",),
        ("hub",),
        ("hookspecs", "plugins", "auth"),
        ("sources",),
        ("ports",),
        ("summary", "metrics"),
        ("worker_peers",),
        ("handlers",),
        ("proxy_server",),
        ("app",),
        ("cli", "config_file", "client", "tail", "workers"),
        ("testing",),
    )
)


# -- reading the package --------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    target: str  # the module imported (absolute)
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(source: str, module: str, is_package: bool, known: set[str]) -> list[Import]:
    """Every import in ``source`` (the text of ``module``), resolved to absolute module names.
    ``from x import y`` imports ``x.y`` when that is a module of ours, else ``x``."""
    tree = ast.parse(source)
    found: list[Import] = []
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_only)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(alias.name, node.lineno, type_only))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:
                candidate = f"{prefix}.{alias.name}"
                found.append(Import(candidate if candidate in known else prefix, node.lineno, type_only))
        for child in ast.iter_child_nodes(node):
            visit(child, type_only)

    visit(tree, False)
    return found


def read_package(root: Path) -> dict[str, tuple[Path, list[Import]]]:
    files = {module_name(root, path): path for path in sorted(root.rglob("*.py"))}
    known = set(files)
    return {
        name: (path, imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", known))
        for name, path in files.items()
    }


# -- checking ---------------------------------------------------------------------------------------


def matches(module: str, names: tuple[str, ...]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in names)


def parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def edges(graph: dict[str, tuple[Path, list[Import]]], module: str, runtime: bool) -> list[tuple[str, Import]]:
    """What importing ``module`` imports: for a load wall, only what loads, parent packages too."""
    out = []
    for imp in graph[module][1]:
        if runtime and imp.type_only:
            continue
        targets = [*parents(imp.target), imp.target] if runtime else [imp.target]
        out.extend((target, imp) for target in targets if target != module)
    return out


def check_wall(graph: dict[str, tuple[Path, list[Import]]], wall: Wall) -> list[str]:
    """One line per source module that reaches a forbidden one, with the chain that does."""
    problems = []
    for start in sorted(m for m in graph if matches(m, wall.sources) and not matches(m, wall.exempt)):
        if wall.runtime:
            starts = [*(p for p in parents(start) if p in graph), start]
        else:
            starts = [start]
        seen = {s: [s] for s in starts}
        queue = list(starts)
        while queue:
            current = queue.pop(0)
            for target, imp in edges(graph, current, wall.runtime):
                if target in seen or (current, target) in wall.ignore:
                    continue
                chain = [*seen[current], f"{target} (line {imp.line})"]
                if matches(target, wall.forbidden):
                    problems.append(f"{wall.name}: {' -> '.join(chain)}")
                    seen[target] = chain
                    continue
                seen[target] = chain
                if target in graph:
                    queue.append(target)
    return problems


def find_cycles(graph: dict[str, tuple[Path, list[Import]]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself),
    over every import, ``TYPE_CHECKING`` ones included (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def targets(module: str) -> list[str]:
        return sorted({imp.target for imp in graph[module][1] if imp.target in graph})

    def connect(module: str) -> None:
        nonlocal counter
        index[module] = low[module] = counter
        counter += 1
        stack.append(module)
        on_stack.add(module)
        for target in targets(module):
            if target not in index:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1 or module in targets(module):
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for module in sorted(graph):
        if module not in index:
            connect(module)
    return cycles


def layer_of(module: str, layers: tuple[tuple[str, ...], ...]) -> int | None:
    best: tuple[int, int] | None = None
    for index, layer in enumerate(layers):
        for name in layer:
            if module == name or ("." in name and module.startswith(name + ".")):  # the root: itself only
                if best is None or len(name) > best[1]:
                    best = (index, len(name))
    return best[0] if best is not None else None


def layer_problems(graph: dict[str, tuple[Path, list[Import]]], layers: tuple[tuple[str, ...], ...]) -> list[str]:
    """One line per import of a module of a later layer (or of a module no layer names)."""
    problems = []
    for module, (_, imports) in sorted(graph.items()):
        own = layer_of(module, layers)
        if own is None:
            problems.append(f"layers: {module} is in no layer (LAYERS in .ci/check_imports.py)")
            continue
        for imp in imports:
            if imp.target not in graph:
                continue
            target = layer_of(imp.target, layers)
            if target is not None and target > own:
                problems.append(
                    f"layers: {module} (layer {own + 1}) imports {imp.target} (layer {target + 1}), line {imp.line}"
                )
    return problems


def cycle_problems(graph: dict[str, tuple[Path, list[Import]]]) -> list[str]:
    problems = []
    for component in find_cycles(graph):
        members = set(component)
        links = dict.fromkeys(
            f"{m} -> {imp.target} (line {imp.line}{', TYPE_CHECKING' if imp.type_only else ''})"
            for m in component
            for imp in graph[m][1]
            if imp.target in members
        )
        problems.append(f"no import cycle: {', '.join(component)} import each other: {'; '.join(links)}")
    return problems


def check(
    root: Path, walls: tuple[Wall, ...] = WALLS, layers: tuple[tuple[str, ...], ...] | None = LAYERS
) -> list[str]:
    graph = read_package(root)
    problems = cycle_problems(graph)
    if layers is not None:
        problems.extend(layer_problems(graph, layers))
    for wall in walls:
        problems.extend(check_wall(graph, wall))
    return problems


def main(argv: list[str]) -> int:
    repo = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    problems = check(repo / PACKAGE)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"check_imports: {len(LAYERS)} layers, {len(WALLS)} walls and no import cycle in {PACKAGE}: all hold")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

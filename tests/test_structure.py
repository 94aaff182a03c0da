"""The package's shape: no import cycle between its modules, counting imports inside
functions (each imports only what sits below it), one home for what used to be written twice,
a README whose settings table is the configuration's own, and no pointer outside the
repository."""

import ast
import os
import subprocess

import aimo_lib

ROOT = os.path.dirname(aimo_lib.__file__)


def _modules() -> dict[str, str]:
    mods = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                mods[rel.removesuffix(".__init__")] = path
    return mods


def _imports(mod: str, path: str, mods: dict[str, str]) -> set[str]:
    """The aimo_lib modules `mod` imports, at module level or inside a function: an import
    deferred into a function cannot fail at import time, but it still ties the two modules
    together, so a loop through one is a circle in the package's layout all the same."""
    package = mod if path.endswith("__init__.py") else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for alias in node.names:  # `from . import x`: the module x if there is one
                if f"{target}.{alias.name}" in mods:
                    out.add(f"{target}.{alias.name}")
                elif target in mods and target != package:
                    out.add(target)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in mods}
    return out - {mod}


def test_no_import_cycle_in_aimo_lib():
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    cycles = []

    def visit(node, stack, done):
        for nxt in sorted(graph[node]):
            if nxt in stack:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in done:
                done.add(nxt)
                visit(nxt, stack + [nxt], done)

    for m in sorted(mods):
        visit(m, [m], {m})
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles)))


def test_one_home_for_the_shared_pieces():
    """The sandbox's preload (the seed's prelude), the truncation marker, the seed's prompt
    format and the lateness allowance are each written once in aimo_lib."""
    sources = {m: open(p, encoding="utf-8").read() for m, p in _modules().items()}
    preload = "import math\\nimport numpy as np\\nimport sympy as sp"
    for text, home in [(preload, "aimo_lib.sandbox"),
                       ("characters truncated]", "aimo_lib._sandbox_io"),
                       ('"### Problem: "', "aimo_lib.prompts"),
                       ("ALLOWANCE_S = ", "aimo_lib.budget")]:
        where = sorted(m for m, s in sources.items() if text in s)
        assert where == [home], f"{text!r} is written in {where}, not only in {home}"


REPO = os.path.dirname(ROOT)


def test_readme_settings_table_is_generated_from_the_fields():
    """README.md's settings table is what `python -m aimo_lib.settings_table` prints from the
    fields' own declarations (regenerate: `python -m aimo_lib.settings_table --write README.md`)."""
    from aimo_lib.settings_table import README_MARKERS, settings_markdown

    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    start, end = README_MARKERS
    assert text.count(start) == 1 and text.count(end) == 1, "README.md lacks the table's markers"
    table = text.split(start, 1)[1].split(end, 1)[0]
    assert table.strip() == settings_markdown().strip(), (
        "README.md's settings table is stale: python -m aimo_lib.settings_table --write README.md")


def _project_files() -> list[str]:
    """The tracked files of the library, its scripts, tests and docs (every file under those
    folders where git is not at hand)."""
    roots = ["aimo_lib", "bench", "training", "scripts", "tests", "docs"]
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", *roots, "README.md", "CHANGELOG.md"],
                             cwd=REPO, capture_output=True, check=True).stdout
        files = [f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = []
    if not files:
        files = ["README.md", "CHANGELOG.md"]
        for root in roots:
            for folder, dirs, names in os.walk(os.path.join(REPO, root)):
                dirs[:] = [d for d in dirs if d != "__pycache__"]
                files += [os.path.relpath(os.path.join(folder, n), REPO) for n in names]
    return [f for f in files if os.path.isfile(os.path.join(REPO, f))]


def test_nothing_points_outside_the_repository():
    """A clone has no shared folder beside it: code and docs cite docs/reference.md or a
    public URL, and name validation data through $AIMO_DATA_DIR."""
    outside = ".." + "/shared"
    where = []
    for rel in _project_files():
        with open(os.path.join(REPO, rel), encoding="utf-8", errors="replace") as f:
            if outside in f.read():
                where.append(rel)
    assert not where, f"{outside} is mentioned in {where}"

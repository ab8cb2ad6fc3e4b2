"""The shape of the code: no import circles between harness/'s modules, no module of harness/ or
impls/ a reader must hold more than MAX_LINES of, no function of harness/ over
MAX_FUNCTION_LINES, every package in pyproject's list, every test file run by some tox environment
(so CI runs it), and a worker side (what runs in other interpreters: chainer's NumPy < 2
environment, an older source tree of a variant) that imports nothing but the standard library,
NumPy, impls and itself.

The import graph is read from the source with ast, every import counted wherever it stands (a
function-level import is a circle all the same, only a later one): `import a.b.c` and
`from a.b import c` are edges to the module they name and to every package on the way there
that the importer is not itself inside (importing harness.results.model runs
harness/results/__init__.py first)."""
from __future__ import annotations

import ast
import configparser
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "harness"
IMPLS = ROOT / "impls"
MAX_LINES = 600
MAX_FUNCTION_LINES = 80  # a function of harness/ a reader takes in at once (issue 30)
# the worker side: what harness.engine.workers' bootstrap imports in the backend's interpreter
# (the packages, then the worker's module) and what they import
WORKER_ENTRY = ("harness", "harness.engine", "harness.engine.worker")
OPTIONAL = {"threadpoolctl"}  # bench.blas_name asks it where installed, and does without
WORKER_SIDE = {"harness", "harness.engine", "harness.engine.worker", "harness.engine.bench",
               "harness.engine.failures", "harness.engine.participants", "harness.engine.kinds",
               *(f"harness.engine.kinds.{p.stem}" for p in (HARNESS / "engine" / "kinds").glob("[!_]*.py"))}


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(HARNESS.rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def _is_package(name: str, mods: dict[str, Path]) -> bool:
    return name in mods and mods[name].name == "__init__.py"


def imports(name: str, path: Path, mods: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(harness modules `name` imports, top-level names of everything else it imports)."""
    package = name if _is_package(name, mods) else name.rpartition(".")[0]
    inside, outside = set(), set()

    def target(dotted: str) -> None:
        if dotted.split(".")[0] != "harness":
            outside.add(dotted.split(".")[0])
            return
        parts = dotted.split(".")
        for i in range(1, len(parts) + 1):  # the packages on the way, then the module itself
            prefix = ".".join(parts[:i])
            if prefix in mods and not (package == prefix or package.startswith(prefix + ".")):
                inside.add(prefix)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                target(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:  # `from pkg import sub` imports the submodule
                sub = f"{mod}.{a.name}"
                target(sub if sub in mods else mod)
    inside.discard(name)
    return inside, outside


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, mods)[0] for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_circle_and_the_packages_on_the_way():
    """The check itself: a circle through a package's __init__ is found, a chain is not."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    mods = modules()
    inside, _ = imports("harness.session.journal", mods["harness.session.journal"], mods)
    assert {"harness.results", "harness.results.schema", "harness.errors"} <= inside
    assert "harness.session" not in inside  # its own package is initialised already


def test_no_import_circles():
    found = cycles(graph())
    assert found == [], "import circles: " + "; ".join(" -> ".join(c) for c in found)


def test_no_module_over_max_lines():
    files = [*modules().values(), *sorted(IMPLS.rglob("*.py"))]
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


def long_functions(path: Path, limit: int) -> dict[str, int]:
    """The functions (methods, nested ones) of a file longer than `limit` lines, by qualified name."""
    out: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef) and (n := child.end_lineno - child.lineno + 1) > limit:
                    out[name] = n
                visit(child, name + ".")
    visit(ast.parse(path.read_text(), str(path)), "")
    return out


def test_no_function_in_harness_over_max_function_lines():
    long = {f"{name}.{fn}": n for name, p in modules().items()
            for fn, n in long_functions(p, MAX_FUNCTION_LINES).items()}
    assert long == {}, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_length_check_measures_methods_and_nested_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("class C:\n    def m(self):\n" + "        x = 1\n" * 5 + "        def inner():\n"
                 + "            y = 2\n" * 3 + "\ndef g():\n    pass\n")
    assert long_functions(f, 3) == {"C.m": 10, "C.m.inner": 4}
    assert long_functions(f, 10) == {}


def tox_test_files(text: str) -> dict[str, set[str]]:
    """tox.ini's environments -> the test files their commands name (tests/test_*.py)."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read_string(text)
    out: dict[str, set[str]] = {}
    for section in cfg.sections():
        if section == "testenv" or section.startswith("testenv:"):
            out[section] = set(re.findall(r"tests/test_\w+\.py", cfg[section].get("commands", "")))
    return out


def test_every_test_file_runs_in_a_tox_environment():
    """CI runs `tox` (.ci/run): a test file no environment names never runs there."""
    named = set().union(*tox_test_files((ROOT / "tox.ini").read_text()).values())
    files = {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")}
    assert files - named == set(), f"in no tox environment: {sorted(files - named)}"
    assert named - files == set(), f"tox names test files that do not exist: {sorted(named - files)}"


def test_the_tox_check_sees_a_missing_file():
    """The check itself: a file named nowhere is missing from what tox_test_files finds."""
    envs = tox_test_files("[testenv:a]\ncommands =\n    pytest tests/test_x.py tests/test_y.py\n"
                          "[testenv:b]\ncommands = pytest tests/test_z.py\n[other]\ncommands = tests/test_w.py\n")
    assert envs == {"testenv:a": {"tests/test_x.py", "tests/test_y.py"}, "testenv:b": {"tests/test_z.py"}}


def test_the_worker_side_imports_only_the_standard_library_numpy_and_impls():
    mods = modules()
    seen, todo, outside = set(), list(WORKER_ENTRY), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        inside, out = imports(name, mods[name], mods)
        outside |= out
        todo.extend(inside)
    assert seen == WORKER_SIDE, sorted(seen)
    assert outside - set(sys.stdlib_module_names) - {"__future__"} - OPTIONAL <= {"numpy", "impls"}, sorted(outside)


def test_every_package_is_in_pyprojects_packages_list():
    """tox installs the package non-editable: a folder of harness/ or impls/ missing from
    [tool.setuptools] packages is missing from the install (and every import of it fails)."""
    import tomllib
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for d in (HARNESS, IMPLS) for p in d.rglob("__init__.py")}
    assert found == listed, f"not listed: {sorted(found - listed)}; listed, not packages: {sorted(listed - found)}"


def test_no_backend_name_outside_the_registry():
    """A backend's facts live in its registry entry (impls/registry.py), so a new backend changes
    nothing in harness/: no string literal there names one. A name that is also a framework's, an
    environment's or a module's to import (torch, jax, chainer, numpy) may stand for that."""
    sys.path.insert(0, str(ROOT))
    from impls import registry
    other = {*registry.FRAMEWORKS, *registry.ENVIRONMENTS, *(m for s in registry.BACKENDS.values() for m in s.requires)}
    names = set(registry.BACKENDS) - other
    assert {"numpy-f32", "torch-cell", "tensorflow-xla", "keras-jax"} <= names  # the check checks something
    named = [f"{name}:{n.lineno} {n.value!r}" for name, p in modules().items()
             for n in ast.walk(ast.parse(p.read_text(), str(p)))
             if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in names]
    assert named == [], f"backend names outside impls/registry.py: {named}"


def test_every_registry_entry_names_what_is_there():
    """The registries that make a new executor, run kind or participant kind one module and an
    entry: every entry imports and is what it says (nothing of Ray is imported to check it)."""
    import importlib
    sys.path.insert(0, str(ROOT))
    from harness.engine.executor import EXECUTORS
    from harness.engine.kinds import KINDS
    from harness.session.kinds import RUN_KINDS
    for entry in [*EXECUTORS.values(), *RUN_KINDS.values()]:
        module, _, name = entry.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), entry
    assert {k.name for k in KINDS.values()} == set(KINDS) and {k.op for k in KINDS.values()} >= {"prepare", "probe"}

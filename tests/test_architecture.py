"""The layout's rules, read from the source with ``ast`` (nothing is imported): who may import whom, no cycles, short modules.

Every ``.py`` under ``ssl_core/`` and ``app/`` is parsed; every import counts, including those inside functions
and under ``if TYPE_CHECKING:``, except for the cycle check, which follows only the imports that run when a
module is imported (module level, not under ``TYPE_CHECKING``). Each failure names the offending module, the
line and the rule. The checkers are plain functions, and the ``test_checker_*`` tests run them on small made-up
modules to show that each one catches what it is meant to catch.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ssl_core", "app")
MAX_LINES = 400

# (a), (b): importer package -> packages it must not import (a module is "in" a package when its dotted name is the
# package's or starts with it and a dot; "gradio" covers gradio.themes ...)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "ssl_core": ("app", "gradio"),
    "ssl_core.analyses": ("ssl_core.lab", "ssl_core.train"),
    "ssl_core.features": ("ssl_core.analyses", "ssl_core.lab", "ssl_core.train", "ssl_core.mim", "ssl_core.search",
                          "app"),
}
# (b): the bottom of the stack: of ssl_core, these import only the packages listed (nothing above them)
ONLY_FROM: dict[str, tuple[str, ...]] = {
    "ssl_core.data": ("ssl_core.data", "ssl_core.errors", "ssl_core.progress"),
    "ssl_core.errors": (),
    "ssl_core.progress": (),
}


# --------------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Import:
    target: str  # dotted module name, as resolved (`resolve_targets`)
    line: int
    at_import: bool  # runs when the importing module is imported: module level and not under TYPE_CHECKING


@dataclass
class Module:
    name: str  # dotted, e.g. "ssl_core.mim.mae"; a package's __init__ is the package name
    lines: int
    imports: list[Import] = field(default_factory=list)


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def raw_imports(source: str, module: str, is_package: bool) -> list[tuple[str, list[str], int, bool]]:
    """Every import statement of a module as (base module, imported names, line, runs at import time).

    Relative imports are made absolute. For ``import a.b`` the names list is empty.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, list[str], int, bool]] = []

    def visit(node: ast.AST, at_import: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name, [], child.lineno, at_import) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[:len(package.split(".")) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                found.append((base, [alias.name for alias in child.names], child.lineno, at_import))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for statement in child.body:
                    visit(ast.Module(body=[statement], type_ignores=[]), False)
                for statement in child.orelse:
                    visit(ast.Module(body=[statement], type_ignores=[]), at_import)
            else:
                visit(child, at_import)

    visit(ast.parse(source), True)
    return found


def resolve_targets(base: str, names: list[str], known: set[str]) -> list[str]:
    """``from base import name``: the submodule ``base.name`` where there is one, else ``base``."""
    if not names:
        return [base]
    return sorted({f"{base}.{name}" if f"{base}.{name}" in known else base for name in names})


def scan(sources: dict[str, tuple[str, bool]]) -> dict[str, Module]:
    """Modules from {dotted name: (source, is a package __init__)}, with their imports resolved."""
    known = set(sources)
    modules = {}
    for name, (source, is_package) in sources.items():
        imports = [Import(target, line, at_import)
                   for base, names, line, at_import in raw_imports(source, name, is_package)
                   for target in resolve_targets(base, names, known)]
        modules[name] = Module(name, len(source.splitlines()), imports)
    return modules


def project_sources(root: Path = ROOT) -> dict[str, tuple[str, bool]]:
    return {module_name(path, root): (path.read_text(encoding="utf-8"), path.name == "__init__.py")
            for package in PACKAGES for path in sorted((root / package).rglob("*.py"))}


# --------------------------------------------------------------------------------------------------- checkers
def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def forbidden_imports(modules: dict[str, Module]) -> list[str]:
    """(a) and (b): each import that breaks `FORBIDDEN` or `ONLY_FROM`, as "module (line n) imports x: rule"."""
    problems = []
    for module in sorted(modules.values(), key=lambda m: m.name):
        for imp in module.imports:
            for importer, banned in FORBIDDEN.items():
                hit = next((b for b in banned if within(module.name, importer) and within(imp.target, b)), None)
                if hit:
                    problems.append(f"{module.name} (line {imp.line}) imports {imp.target}: {importer} must not "
                                    f"import {hit}")
            for importer, allowed in ONLY_FROM.items():
                if (within(module.name, importer) and within(imp.target, "ssl_core")
                        and not any(within(imp.target, a) for a in allowed)):
                    rule = f"may import only {', '.join(allowed)} of ssl_core" if allowed else "imports nothing of ssl_core"
                    problems.append(f"{module.name} (line {imp.line}) imports {imp.target}: {importer} {rule}")
    return problems


def import_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    """Module -> the project modules it imports when it is imported (at_import imports only)."""
    return {m.name: {i.target for i in m.imports if i.at_import and i.target in modules and i.target != m.name}
            for m in modules.values()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], found by depth-first search; None when the graph has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def long_modules(modules: dict[str, Module], limit: int = MAX_LINES) -> list[str]:
    """(d): modules over ``limit`` lines, as "module: n lines"."""
    return [f"{m.name}: {m.lines} lines" for m in sorted(modules.values(), key=lambda m: m.name) if m.lines > limit]


# --------------------------------------------------------------------------------------------------- the project
PROJECT = scan(project_sources())


def test_the_scan_sees_both_packages_and_their_function_level_imports():
    assert {"ssl_core", "ssl_core.mim.mae", "app.cli.main"} <= set(PROJECT)
    lazy = [i for i in PROJECT["ssl_core.lab.mim"].imports if i.target == "ssl_core.mim.mae_checkpoints"]
    assert lazy and not lazy[0].at_import  # imported inside a function


def test_ssl_core_never_imports_the_app_or_gradio_and_stages_import_only_downwards():
    problems = forbidden_imports(PROJECT)
    assert not problems, "forbidden imports:\n" + "\n".join(problems)


def test_no_import_cycle_among_ssl_core_and_app_modules():
    cycle = find_cycle(import_graph(PROJECT))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_is_over_400_lines():
    problems = long_modules(PROJECT)
    assert not problems, f"modules over {MAX_LINES} lines (split them):\n" + "\n".join(problems)


# --------------------------------------------------------------------------------------------------- the checkers
def made_up(**sources: str) -> dict[str, Module]:
    """Modules from keyword sources: ``ssl_core__features__x="..."`` is ``ssl_core.features.x`` (``___init``: a
    package)."""
    out = {}
    for key, source in sources.items():
        name = key.replace("__", ".")
        is_package = name.endswith("._init")
        out[name.removesuffix("._init")] = (source, is_package)
    return scan(out)


def test_checker_finds_a_cycle_and_prints_it():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    modules = made_up(ssl_core__mim__m="from ssl_core.mim import n\n", ssl_core__mim__n="import ssl_core.mim.m\n",
                      ssl_core__mim___init="")
    assert find_cycle(import_graph(modules)) == ["ssl_core.mim.m", "ssl_core.mim.n", "ssl_core.mim.m"]


def test_checker_ignores_lazy_and_type_checking_imports_for_cycles_but_not_for_the_rules():
    modules = made_up(
        ssl_core__features__x="from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ssl_core.analyses.y import Y\n",
        ssl_core__analyses__y="import ssl_core.features.x\n\ndef f():\n    from ssl_core.lab import z\n",
        ssl_core__lab="",
    )
    assert find_cycle(import_graph(modules)) is None
    assert forbidden_imports(modules) == [
        "ssl_core.analyses.y (line 4) imports ssl_core.lab: ssl_core.analyses must not import ssl_core.lab",
        "ssl_core.features.x (line 3) imports ssl_core.analyses.y: ssl_core.features must not import "
        "ssl_core.analyses",
    ]
    modules["ssl_core.features.x"].imports[-1] = Import("ssl_core.analyses.y", 3, True)  # as if run at import
    assert find_cycle(import_graph(modules)) == ["ssl_core.analyses.y", "ssl_core.features.x", "ssl_core.analyses.y"]


def test_checker_names_each_forbidden_import():
    modules = made_up(
        ssl_core__render__r="import gradio as gr\nfrom app.views import v\n",
        ssl_core__data__d="from ssl_core.errors import BadRequest\nfrom ssl_core.features.encoder import Encoder\n",
        ssl_core__errors="import os\nfrom ssl_core.progress import ProgressFn\n",
        ssl_core__features__f="def g():\n    from ssl_core.mim.mae import build_mae\n",
        ssl_core__mim__ok="from ssl_core.features.vit_tokens import embed_patches\nfrom ssl_core.data import images\n",
        app__views__v="import gradio\nfrom ssl_core.lab import run_lab\n",
    )
    assert forbidden_imports(modules) == [
        "ssl_core.data.d (line 2) imports ssl_core.features.encoder: ssl_core.data may import only ssl_core.data, "
        "ssl_core.errors, ssl_core.progress of ssl_core",
        "ssl_core.errors (line 2) imports ssl_core.progress: ssl_core.errors imports nothing of ssl_core",
        "ssl_core.features.f (line 2) imports ssl_core.mim.mae: ssl_core.features must not import ssl_core.mim",
        "ssl_core.render.r (line 1) imports gradio: ssl_core must not import gradio",
        "ssl_core.render.r (line 2) imports app.views.v: ssl_core must not import app",
    ]


def test_checker_resolves_relative_and_submodule_imports():
    modules = made_up(ssl_core__mim___init="", ssl_core__mim__a="from . import b\nfrom .b import thing\n",
                      ssl_core__mim__b="from ..features import encoder\n", ssl_core__features__encoder="")
    assert [i.target for i in modules["ssl_core.mim.a"].imports] == ["ssl_core.mim.b", "ssl_core.mim.b"]
    assert [i.target for i in modules["ssl_core.mim.b"].imports] == ["ssl_core.features.encoder"]


def test_checker_names_long_modules():
    modules = made_up(ssl_core__short="x = 1\n" * 400, app__long="x = 1\n" * 401)
    assert long_modules(modules) == ["app.long: 401 lines"]

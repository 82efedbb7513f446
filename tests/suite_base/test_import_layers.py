"""Imports run one way (the design's layering): ``experiments`` and ``benchmarks`` on top; tasks
(``lightning_modules``) above their backbones; data (``datamodules``) above its toy generators; ``suite_base`` below
all of them. The files are read with ``ast``, not imported, so an import inside a function or under ``TYPE_CHECKING``
counts as well; every arrow against the order and every import cycle is listed."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("suite_base", "lightning_modules", "datamodules", "experiments", "benchmarks")

# Arrows still to invert, each named with its reason; the test fails when one of them is gone (drop it here then).
PENDING: set[tuple[str, str]] = set()


def module_files(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``packages`` under ``root``."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def import_arrows(modules: dict[str, Path]) -> list[tuple[str, int, str]]:
    """``(importer, line, imported)`` for every import of one of ``modules`` by another, wherever it stands in the
    file; ``from package import name`` points at the submodule ``package.name`` when there is one."""

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    arrows = set()
    for module, path in modules.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [known(alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                targets = [known(f"{base}.{alias.name}") or known(base) for alias in node.names]
            else:
                continue
            arrows |= {(module, node.lineno, target) for target in targets if target and target != module}
    return sorted(arrows)


def layer(module: str) -> tuple[str, int]:
    """``(side, rank)``: an import must go to ``suite_base``, or to the same side at the same or a lower rank."""
    top = module.split(".")[0]
    if top == "suite_base":
        return "base", 0
    if top in ("experiments", "benchmarks"):
        return "command line", 3
    if top == "lightning_modules":
        return "tasks", 1 if module.split(".")[1:2] == ["backbones"] else 2
    if top == "datamodules":
        return "data", 1 if module.split(".")[1:2] == ["toy"] else 2
    raise ValueError(f"{module} is in no layer")


def wrong_arrows(arrows: list[tuple[str, int, str]], modules: dict[str, Path]) -> list[str]:
    """One line per import against the order: ``file:line: importer -> imported (why)``."""
    out = []
    for src, line, dst in arrows:
        (side, rank), (to_side, to_rank) = layer(src), layer(dst)
        if to_side == "base" or side == "command line" or (side == to_side and to_rank <= rank):
            continue
        where = modules[src].relative_to(REPO) if modules[src].is_relative_to(REPO) else modules[src]
        out.append(f"{where}:{line}: {src} -> {dst} ({side} rank {rank} may not import {to_side} rank {to_rank})")
    return out


def import_cycles(arrows: list[tuple[str, int, str]]) -> list[list[str]]:
    """The import cycles: every strongly connected group of two or more modules (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for src, _, dst in arrows:
        graph.setdefault(src, set()).add(dst)
        graph.setdefault(dst, set())
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(sorted(group))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for node in sorted(graph):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(groups)


def test_imports_run_one_way():
    modules = module_files(REPO)
    assert {"suite_base.errors", "experiments.cli", "lightning_modules.base", "datamodules.toy"} <= set(modules)
    arrows = import_arrows(modules)
    pending = {(src, dst) for src, _, dst in arrows} & PENDING
    wrong = wrong_arrows([arrow for arrow in arrows if (arrow[0], arrow[2]) not in PENDING], modules)
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)
    assert pending == PENDING, f"no longer imported, drop from PENDING: {sorted(PENDING - pending)}"


def test_no_import_cycles():
    cycles = import_cycles(import_arrows(module_files(REPO)))
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(group) for group in cycles)


def test_suite_base_needs_only_the_standard_library():
    modules = module_files(REPO, ("suite_base",))
    assert "suite_base.errors" in modules and "suite_base.io" in modules
    outside = []
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            outside += [f"{module} imports {n}" for n in names if n.split(".")[0] not in sys.stdlib_module_names]
    assert [line for line in outside if " imports suite_base" not in line] == []


def test_the_checker_finds_function_level_imports_relative_imports_and_cycles(tmp_path):
    files = {
        "suite_base/__init__.py": "",
        "suite_base/errors.py": "import json\n",
        "lightning_modules/__init__.py": "",
        "lightning_modules/backbones/__init__.py": "from lightning_modules import seg\n",
        "lightning_modules/seg.py": "from .backbones import x\n\ndef f():\n    from datamodules.toy import write\n",
        "datamodules/__init__.py": "from suite_base.errors import DataError\n",
        "datamodules/ade.py": "import datamodules.toy.scenes\n",
        "datamodules/toy/__init__.py": "",
        "datamodules/toy/scenes.py": "from .. import ade\nfrom experiments import cli\n",
        "experiments/__init__.py": "",
        "experiments/cli.py": "from lightning_modules.seg import f\nfrom datamodules import ade\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = module_files(tmp_path, ("suite_base", "lightning_modules", "datamodules", "experiments"))
    arrows = import_arrows(modules)
    assert ("lightning_modules.seg", 4, "datamodules.toy") in arrows  # inside a function
    assert ("lightning_modules.seg", 1, "lightning_modules.backbones") in arrows  # relative
    assert ("datamodules.toy.scenes", 1, "datamodules.ade") in arrows  # `from .. import ade` is the submodule
    wrong = [line.split(": ", 1)[1].split(" (")[0] for line in wrong_arrows(arrows, modules)]
    assert wrong == [
        "datamodules.toy.scenes -> datamodules.ade",
        "datamodules.toy.scenes -> experiments.cli",
        "lightning_modules.backbones -> lightning_modules.seg",
        "lightning_modules.seg -> datamodules.toy",
    ]
    assert import_cycles(arrows) == [
        ["datamodules.ade", "datamodules.toy.scenes", "experiments.cli"],
        ["lightning_modules.backbones", "lightning_modules.seg"],
    ]

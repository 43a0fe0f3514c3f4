"""The package's import graph: no cycles, and every module imports only from its own layer or those below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "shopee_fastai"
# Lowest first. A module may import from its own layer and any layer before it, never from a later one.
LAYERS = [
    {"__init__", "errors", "io", "config"},
    {"device", "machine"},
    {"data"},
    {"plots"},
    {"nets"},
    {"artifacts"},
    {"inference"},
    {"evaluation", "matching"},
    {"training"},
    {"eda", "audit"},
    {"api"},
    {"app"},
    {"cli", "__main__"},
]


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _imports(path: Path) -> set[str]:
    """Package modules `path` imports, at module level or inside functions (both create the dependency)."""
    me = _module(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
            elif node.module and node.module.split(".")[0] == "shopee_fastai":
                base = []
                node = ast.ImportFrom(module=".".join(node.module.split(".")[1:]) or None, names=node.names, level=1)
            else:
                continue
            target = base + (node.module.split(".") if node.module else [])
            for alias in node.names:  # `from . import config` names a module; `from .x import y` names x
                sub = target + [alias.name]
                found.add(".".join(sub) if (PACKAGE.joinpath(*sub).with_suffix(".py").is_file()
                                            or PACKAGE.joinpath(*sub).is_dir()) else ".".join(target) or "__init__")
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("shopee_fastai.")}
    return {f for f in found if f and f != _module(path)}


def _graph() -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> int:
    top = module.split(".")[0]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_every_module_has_a_layer():
    named = set().union(*LAYERS)
    unnamed = sorted(m for m in _graph() if m.split(".")[0] not in named)
    assert not unnamed, "modules no layer names: " + ", ".join(unnamed)


def test_imports_go_downward_only():
    upward = [f"{m} -> {t}" for m, targets in _graph().items() for t in targets if _layer(t) > _layer(m)]
    assert not upward, "imports from a higher layer: " + ", ".join(sorted(upward))


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(cycles)


@pytest.mark.parametrize("module", ["device", "data.images", "inference.predictions", "inference.backends",
                                    "inference.load"])
def test_low_layers_do_not_import_fastai_at_import_time(module):
    """The ONNX predict path stays free of fastai: a cold `predict` pays only for what it uses."""
    import subprocess
    import sys

    code = f"import sys, shopee_fastai.{module}; print('fastai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_imports_sit_at_the_top_unless_a_comment_says_why():
    """Outside the CLI's command bodies, an import inside a function is rare (a tenth of all at most) and says why,
    on its line or on the comment line above its group."""
    total, inside, silent = 0, 0, []
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        total += sum(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree))
        if path == PACKAGE / "cli.py":
            continue
        nested = {n.lineno for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        inside += len(nested)
        for line in sorted(nested):
            above = line - 2
            while above >= 0 and (lines[above].strip().startswith(("import ", "from ")) or not lines[above].strip()):
                above -= 1
            if "#" not in lines[line - 1] and not (above >= 0 and lines[above].strip().startswith("#")):
                silent.append(f"{path.relative_to(PACKAGE)}:{line}")
    assert inside <= total / 10, f"{inside} of {total} imports sit inside functions"
    assert not silent, "imports inside functions that do not say why: " + ", ".join(silent)

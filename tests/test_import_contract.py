"""Dependencies flow one way (DESIGN §2): every kdlab package may import only the packages written down here.

Imports are read from the source (every ``import``/``from`` statement, also inside functions), so a lazy import
is an arrow too. A reversed arrow — the engine importing a task, losses importing anything of kdlab, ``kdlab.hf``
importing the engine — fails this test with the file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "kdlab"

# package -> the kdlab packages it may import (besides itself). Leaves first, the command line last.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "quiet": set(),
    "io": {"errors"},
    "rl_config": {"errors"},
    "config_cooperative": set(),
    "config_compress": set(),
    "config_pid": set(),
    "config": {"errors", "rl_config", "config_cooperative", "config_compress", "config_pid"},
    "losses": set(),
    "eval": {"errors", "io"},
    "models": {"errors", "io", "quiet"},
    "data": {"errors", "io"},
    "methods": {"errors", "losses", "eval"},
    "teacher": {"errors", "config", "io", "losses", "models", "data"},
    "engine": {"errors", "config", "io", "losses", "eval", "models", "data", "methods", "teacher"},
    "rl": {"errors", "config", "rl_config", "io", "eval", "engine"},
    "tasks": {
        "errors",
        "config",
        "config_cooperative",
        "io",
        "losses",
        "eval",
        "models",
        "data",
        "methods",
        "teacher",
        "engine",
        "rl",
    },
    "api": {"errors", "config", "models", "engine", "tasks"},
    "workflow": {"errors", "config", "io", "eval", "engine", "tasks", "api"},
    "compress": {"errors", "config", "io", "quiet", "eval", "models", "data", "methods", "engine", "tasks", "api"},
    "hf": {"errors", "config", "quiet", "losses", "methods", "teacher"},
    "demo": {"errors", "losses", "methods", "api"},
    "cli_listing": {"losses", "methods"},
    "cli_run": {"errors", "engine"},
    "cli": {
        "errors",
        "config",
        "losses",
        "eval",
        "methods",
        "engine",
        "tasks",
        "api",
        "workflow",
        "compress",
        "demo",
        "cli_listing",
        "cli_run",
    },
    "__init__": {"api"},
}


def _package(path: Path, root: Path = SRC) -> str:
    parts = path.relative_to(root).parts
    return parts[0].removesuffix(".py")


def _imported(node: ast.AST, path: Path, root: Path) -> list[str]:
    """The kdlab packages one import statement names."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: resolve against the file's package
            base = list(path.relative_to(root).parent.parts)
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            names = [".".join(["kdlab", *base, *([node.module] if node.module else [])])]
            if not node.module and not base:
                names = [f"kdlab.{alias.name}" for alias in node.names]
        elif node.module == "kdlab":  # from kdlab import tasks
            names = [f"kdlab.{alias.name}" for alias in node.names]
        else:
            names = [node.module or ""]
    else:
        return []
    return [name.split(".")[1] for name in names if name.startswith("kdlab.") and len(name.split(".")) > 1]


def arrows(root: Path = SRC) -> list[tuple[str, str, str]]:
    """(importer package, imported package, "file:line") for every cross-package import under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        me = _package(path, root)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for other in _imported(node, path, root):
                if other != me and other != "__version__":
                    found.append((me, other, f"{path.relative_to(root)}:{node.lineno}"))
    return found


def reversed_arrows(root: Path = SRC) -> list[str]:
    bad = []
    for me, other, where in arrows(root):
        if other not in ALLOWED.get(me, set()):
            bad.append(f"{where}: {me} imports {other}")
    return bad


def test_every_package_is_in_the_contract():
    packages = {_package(p) for p in SRC.rglob("*.py")}
    assert packages <= set(ALLOWED), f"add these packages to ALLOWED: {sorted(packages - set(ALLOWED))}"


def test_dependencies_flow_one_way():
    assert reversed_arrows() == []


def test_the_contract_has_no_cycle():
    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in ALLOWED[start])

    assert [p for p in ALLOWED if reaches(p, p, set())] == []


@pytest.mark.parametrize(
    ("file", "line", "arrow"),
    [
        ("engine/loop.py", "from kdlab.tasks import classify", "engine imports tasks"),
        ("losses/kd.py", "from kdlab.eval import metrics", "losses imports eval"),
        ("hf/loss.py", "from kdlab.engine.loop import run_loop", "hf imports engine"),
        ("methods/kd.py", "    from kdlab.engine import fit", "methods imports engine"),
    ],
)
def test_a_reversed_import_is_caught(tmp_path, file, line, arrow):
    """Copy the sources, add one reversed import (also a lazy one inside a function), and the check names it."""
    import shutil

    root = tmp_path / "kdlab"
    shutil.copytree(SRC, root)
    target = root / file
    source = target.read_text()
    if line.startswith("    "):
        source += f"\n\ndef _probe():\n{line}\n"
    else:
        source = f"{line}\n{source}"
    target.write_text(source)
    found = reversed_arrows(root)
    assert [x for x in found if arrow in x] and all(file in x for x in found), found

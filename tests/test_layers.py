"""The package's layers: every import inside ``comfyui_cyclevos`` points down (or stays in its own layer)."""

from __future__ import annotations

import ast
from pathlib import Path

import comfyui_cyclevos

PACKAGE = Path(comfyui_cyclevos.__file__).resolve().parent

# Lowest first; a module may import from its own layer and from the layers before it, never after.
LAYERS = [
    {"errors", "config", "filters", "demo", "weights"},
    {"runtime"},
    {"model"},
    {"cycle"},
    {"inference"},
    {"media"},
    {"training", "evaluation"},
    {"runner"},
    {"batch"},
    {"cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _top(path: Path) -> str:
    """The layer name of a module file: its subpackage, or its own name at the top of the package."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def _imported(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, top-level name inside the package) of every import in a module, at any depth."""
    here = list(path.relative_to(PACKAGE).parent.parts)
    found = []
    for node in ast.walk(ast.parse(source if source is not None else path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                parts = base + (node.module.split(".") if node.module else [])
                names = [parts[0]] if parts else [a.name for a in node.names]
            elif node.module and node.module.split(".")[0] == PACKAGE.name:
                rest = node.module.split(".")[1:]
                names = rest[:1] or [a.name for a in node.names]
            else:
                continue
            found += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name.split(".")[1])
                for a in node.names
                if a.name.split(".")[0] == PACKAGE.name and "." in a.name
            ]
    return found


def test_every_module_belongs_to_a_layer() -> None:
    tops = {_top(p) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE}
    assert tops <= set(RANK), f"modules outside the layer list: {sorted(tops - set(RANK))}"


def _upward(path: Path, source: str | None = None) -> list[str]:
    mine = RANK[_top(path)]
    return [
        f"{path.relative_to(PACKAGE)}:{line} imports {name}"
        for line, name in _imported(path, source)
        if name in RANK and RANK[name] > mine
    ]


def test_no_import_reaches_up_a_layer() -> None:
    upward = [
        u
        for p in sorted(PACKAGE.rglob("*.py"))
        if not (p.parent == PACKAGE and p.name == "__init__.py")
        for u in _upward(p)
    ]
    assert not upward, "imports that reach up a layer:\n" + "\n".join(upward)


def test_the_walk_finds_upward_imports_in_every_form() -> None:
    """The walk itself: relative, absolute and function-level imports of a higher layer are all found."""
    source = (
        "from ..config import ModelConfig\n"  # down: fine
        "from .decoder import Decoder\n"  # own layer: fine
        "def f():\n"
        "    from ..inference.engine import InferenceCore\n"
        "    from comfyui_cyclevos.media import frames\n"
        "    import comfyui_cyclevos.cli\n"
    )
    found = _upward(PACKAGE / "model" / "network.py", source)
    assert [u.split(" imports ")[1] for u in found] == ["inference", "media", "cli"]

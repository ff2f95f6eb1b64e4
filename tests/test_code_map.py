"""The README's code map holds: every module of pg_replication has its line, imports only what
its line says, from its own layer or the layers above, and never in a circle. No database needed."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pg_replication"


def _imports() -> dict:
    modules = {path.stem: path for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    return {name: set(re.findall(r"^\s*from \.([a-z_]+) import", path.read_text(), re.M))
            for name, path in modules.items()}


def _code_map() -> dict:
    """module -> (layer number, the modules its line says it imports)."""
    text = (ROOT / "README.md").read_text().split("## Code map", 1)[1]
    lines, layer = {}, 0
    for row in re.findall(r"^\|(.*)\|$", text, re.M):
        cells = [cell.strip() for cell in row.split("|")]
        heading = re.match(r"\*\*(\d+)\.", cells[0])
        if heading:
            layer = int(heading.group(1))
            continue
        name = re.fullmatch(r"`([a-z_]+)`", cells[0])
        if name:
            lines[name.group(1)] = (layer, set(re.findall(r"[a-z_]+", cells[2])))
    return lines


def test_every_module_is_on_the_code_map():
    assert set(_imports()) - set(_code_map()) == set()


def test_each_module_imports_what_its_line_says_from_its_layer_or_above():
    code_map = _code_map()
    for module, imported in sorted(_imports().items()):
        layer, listed = code_map[module]
        assert imported <= listed, f"{module} imports {sorted(imported - listed)} (README)"
        higher = sorted(name for name in imported if code_map[name][0] > layer)
        assert not higher, f"{module} (layer {layer}) imports from a lower layer: {higher}"


def test_imports_go_one_way():
    imports = _imports()

    def cycle_from(module, path):
        for imported in sorted(imports.get(module, ())):
            if imported in path:
                return path[path.index(imported):] + [imported]
            found = cycle_from(imported, path + [imported])
            if found:
                return found
        return None

    for module in sorted(imports):
        assert cycle_from(module, [module]) is None

"""The README's code map holds: every module of pg_replication has its line, and the imports
between modules go one way (no cycles). No database needed."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pg_replication"


def _imports() -> dict:
    modules = {path.stem: path for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    return {name: set(re.findall(r"^\s*from \.([a-z_]+) import", path.read_text(), re.M))
            for name, path in modules.items()}


def test_every_module_is_on_the_code_map():
    code_map = (ROOT / "README.md").read_text().split("## Code map", 1)[1]
    listed = set(re.findall(r"^\| `([a-z_]+)`", code_map, re.M))
    listed |= set(re.findall(r"^\| `[a-z_]+`, `([a-z_]+)`", code_map, re.M))
    assert set(_imports()) - listed == set()


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

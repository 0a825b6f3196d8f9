"""What import-linter cannot say about the code's shape.

The layering, the forbidden imports (pure modules import no I/O library, the runner neither
the client nor the executor, the operator not trio) and the absence of import cycles are
import-linter contracts in pyproject.toml ([tool.importlinter]), checked by ``make lint``.
import-linter forbids whole external packages only: here, that pure modules, which may parse
URLs (``urllib.parse``), never open one (``urllib.request``); and the size of modules.
"""

import ast
import pathlib
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[2]
ROOT = REPO / "grain"


def pure_modules():
    """The source modules of the contract on pure modules, as files."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    [contract] = [c for c in config["tool"]["importlinter"]["contracts"]
                  if c["name"].startswith("Pure modules")]
    assert "trio" in contract["forbidden_modules"]
    return [REPO / (name.replace(".", "/") + ".py") for name in contract["source_modules"]]


def imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_pure_modules_open_no_url():
    paths = pure_modules()
    assert len(paths) >= 12 and all(p.is_file() for p in paths), paths
    for path in paths:
        bad = {m for m in imports(path) if m == "urllib.request" or m.startswith("urllib.request.")}
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_no_module_is_over_600_lines():
    for path in ROOT.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 600, path

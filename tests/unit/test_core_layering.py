"""Pure modules stay pure: no I/O libraries in the decision code."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2] / "grain"
PURE = ["resource.py", "executor/placement.py", "executor/placement_index.py",
        "executor/placement_queue.py", "executor/ledger.py", "executor/sessions.py",
        "protocol/frames.py", "net/endpoints.py", "errors.py", "protocol/messages.py",
        "auth.py", "worker/output.py"]
IO = {"trio", "socket", "subprocess", "psutil", "ssl", "asyncio", "urllib.request", "http"}


def imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_pure_modules_import_no_io():
    for rel in PURE:
        bad = {m for m in imports(ROOT / rel) if m in IO or m.split(".")[0] in IO}
        assert not bad, f"{rel} imports {bad}"


def test_no_module_is_over_600_lines():
    for path in ROOT.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 600, path

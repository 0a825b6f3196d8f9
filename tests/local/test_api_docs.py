"""docs/api.md stays true: its examples run as scripts and print what their ``# ->``
comments say, and it documents every option of ``run_combine``, every public method of a
wait group and every environment variable the client reads."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.docs import REPO, Example, python_examples

import grain
from grain import config

API = REPO / "docs" / "api.md"
EXAMPLES = [e for e in python_examples() if e.file == "docs/api.md" and e.not_run is None]
SAYS = re.compile(r"#\s*->\s*(.+?)\s*$")


def test_the_reference_has_runnable_examples() -> None:
    assert len(EXAMPLES) >= 8


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_each_example_prints_what_it_says(example: Example, tmp_path: Path) -> None:
    expected = [m.group(1) for line in example.code.splitlines() if (m := SAYS.search(line))]
    (tmp_path / "main.py").write_text(example.code + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAIN_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "main.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{example.name}:\n{done.stdout}\n{done.stderr}"
    for text in expected:
        assert text in done.stdout, f"{example.name} should print {text}:\n{done.stdout}"


def test_every_option_method_and_variable_is_documented() -> None:
    doc = API.read_text()
    for name in inspect.signature(grain.run_combine).parameters:
        if name != "subtasks":
            assert f"`{name}`" in doc, f"run_combine's {name} is not in docs/api.md"
    public = [n for n, _ in inspect.getmembers(grain.WaitGroup) if not n.startswith("_")]
    for name in [*public, "results"]:
        assert f"wg.{name}" in doc, f"WaitGroup.{name} is not in docs/api.md"
    for name in ("run_combine", "combine", "open_waitgroup", "exec1", "load_cache_or_exec1",
                 "GVAR", "return_exceptions"):
        assert name in doc
    client = REPO / "grain" / "client"
    used = set()
    for path in client.glob("*.py"):
        used.update(re.findall(r"config\.(ENV_[A-Z_]+)", path.read_text()))
    assert used, "the client reads its variables through grain.config"
    for const in sorted(used):
        assert getattr(config, const) in doc, f"{getattr(config, const)} is not documented"

"""Every fenced Python example of README.md and docs/*.md that does not say why it cannot
run (``<!-- not run: ... -->``, see tests/support/docs.py) runs here, as a user would run
it: saved as a script and started with ``python script.py``, on the embedded cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.docs import REPO, Example, python_examples

RUNNABLE = [e for e in python_examples() if e.not_run is None]

#: what an example prints, where its comments say so
EXPECTED = {"README.md": ["[49, 328350]"]}


@pytest.mark.parametrize("example", RUNNABLE, ids=[e.name for e in RUNNABLE])
def test_example_runs(example: Example, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(example.code + "\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRAIN_PROGRESS": "0"}
    env.pop("GRAIN_ADDRESS", None)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{example.name} failed:\n{done.stdout}\n{done.stderr}"
    for text in EXPECTED.get(example.file, []):
        assert text in done.stdout, f"{example.name} should print {text}:\n{done.stdout}"


def test_the_readme_program_is_run() -> None:
    assert any(e.file == "README.md" for e in RUNNABLE)

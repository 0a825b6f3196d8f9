"""The script tier: user programs run the way users run them, ``python my_sweep.py``.

Their functions and classes live in ``__main__``, they ``import numpy`` at the top, and
modules beside the script are imported by name. ``run_script`` writes the program (and any
helper modules) into a fresh directory and runs it in a subprocess with this checkout's
Grain, returning the completed process; a test asserts on what the program printed (a
last line of JSON is the usual way to hand results back).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from runner_cluster import RunScript, script_env


@pytest.fixture
def run_script(tmp_path: Path) -> RunScript:
    """``run_script(source, files={"mysim.py": "..."}, args=(), env={}, timeout=120,
    cwd=None)``: write ``main.py`` (and ``files``) into a directory of its own, run
    ``python main.py`` there (or from ``cwd``), return the completed process."""
    def run(source: str, *, files: dict[str, str] | None = None, args: tuple[str, ...] = (),
            env: dict[str, str] | None = None, timeout: float = 120,
            cwd: Path | None = None, name: str = "main.py") -> subprocess.CompletedProcess[str]:
        project = tmp_path / "project"
        project.mkdir(exist_ok=True)
        for rel, text in (files or {}).items():
            p = project / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(textwrap.dedent(text))
        script = project / name
        script.write_text(textwrap.dedent(source))
        return subprocess.run([sys.executable, str(script), *args], capture_output=True,
                              text=True, timeout=timeout, env=script_env(env),
                              cwd=cwd or project, stdin=subprocess.DEVNULL)
    return run


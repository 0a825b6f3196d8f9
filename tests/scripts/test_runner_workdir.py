"""A worker started in a folder that holds a ``grain/`` directory (the folder of a clone of
this repository, say) still runs jobs: its runners never import from their working
directory (they start with ``python -P``), so that folder cannot shadow Grain itself.

The worker is started as users start it, with the ``grain`` command, in such a folder; a
program connects over TCP and runs jobs that use ``GVAR`` (which the impostor lacks).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from runner_cluster import Harness, RunScript, last_json, process_env

pytestmark = pytest.mark.timeout(180)

GRAIN_COMMAND = Path(sys.executable).parent / "grain"

SCRIPT = """
    import json
    import os
    import sys

    import grain
    from grain import Cores


    def where():
        import grain
        return [grain.__file__, grain.GVAR.instance, sorted(grain.GVAR.res.c), os.getcwd()]


    async def main():
        print(json.dumps(await grain.exec1(Cores(1), where)))


    grain.run_combine(main, address=sys.argv[1], token=sys.argv[2], output="off",
                      progress=False)
"""


@pytest.mark.skipif(not GRAIN_COMMAND.exists(), reason="the grain command is not installed")
def test_a_worker_in_a_folder_holding_grain_still_runs_jobs(run_script: RunScript,
                                                            tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "grain").mkdir(parents=True)
    (checkout / "grain" / "__init__.py").write_text("# not Grain: an impostor\n")
    (checkout / "grain" / "runner").mkdir()
    (checkout / "grain" / "runner" / "__init__.py").write_text("raise SystemExit(3)\n")
    (tmp_path / "cluster").mkdir()
    h = Harness(tmp_path / "cluster")
    log = tmp_path / "worker.log"
    try:
        ex = h.executor()
        with open(log, "wb") as f:
            worker = subprocess.Popen(
                [str(GRAIN_COMMAND), "worker", "--executor", ex.address, "--token-file",
                 str(h.token_file), "--name", "in-checkout", "--cores", "0",
                 "--memory", "1GB", "--gpus", "none"],
                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=checkout, env=process_env())
        try:
            ex.wait_workers(["in-checkout"])
            out = last_json(run_script(SCRIPT, args=(ex.address, h.token)))
            real = str(Path(__file__).resolve().parents[2] / "grain" / "__init__.py")
            assert out == [real, "in-checkout", [0], str(checkout)], log.read_text()
        finally:
            worker.terminate()
            worker.wait(30)
    finally:
        assert not h.cleanup()

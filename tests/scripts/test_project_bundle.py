"""Issue 10 item 4: the project's own modules reach remote workers.

A script imports a module beside it (``from mysim import simulate``) and a package of its
project (``mylib``, with a data file read through ``__file__``); its jobs run on real
``grain executor``/``grain worker`` processes started in another directory, whose import
path does not hold the project. They work because the client ships the project (a zip the
workers unpack); with shipping turned off they fail as they used to. The same holds for
the original's form, ``run_combine(main, ["host:port"], rpw)``, with a passive worker.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from runner_cluster import RunScript, TcpCluster, last_json, tcp_cluster  # noqa: F401

pytestmark = pytest.mark.timeout(240)

FILES = {
    "mysim.py": """
        import os

        def simulate(x):
            return {"value": x * x, "module_file": __file__, "cwd": os.getcwd()}
    """,
    "mylib/__init__.py": """
        from .physics import energy
    """,
    "mylib/physics.py": """
        import json, os
        with open(os.path.join(os.path.dirname(__file__), "constants.json")) as f:
            C = json.load(f)["c"]

        def energy(m):
            return m * C * C
    """,
    "mylib/constants.json": '{"c": 3}',
}

SCRIPT = """
    import json
    import sys

    import grain
    from grain import Cores
    from mysim import simulate
    from mylib import energy


    async def main():
        async with grain.open_waitgroup(return_exceptions=True) as wg:
            for i in range(4):
                wg.submit(Cores(1), simulate, i)
            wg.submit(Cores(1), energy, 2)
        return wg.results


    kw = dict(address=sys.argv[1], token=sys.argv[2])
    if len(sys.argv) > 3:
        kw["ship_project"] = sys.argv[3] == "on"
    out = grain.run_combine(main, output="off", progress=False, **kw)
    print(json.dumps([r if not isinstance(r, BaseException) else
                      f"{type(r).__name__}: {r}" for r in out]))
"""


def _check_shipped(results: list[Any], project: Path) -> None:
    sims, energy = results[:4], results[4]
    assert [r["value"] for r in sims] == [0, 1, 4, 9], results
    assert energy == 18
    for r in sims:
        # imported from the unpacked bundle on the worker, not from the project directory
        assert not r["module_file"].startswith(str(project)), r
        assert Path(r["module_file"]).name == "mysim.py"


def test_project_modules_reach_a_worker_started_elsewhere(run_script: RunScript,
                                                          tcp_cluster: TcpCluster,  # noqa: F811
                                                          tmp_path: Path) -> None:
    proc = run_script(SCRIPT, files=FILES, args=tcp_cluster.args)
    _check_shipped(last_json(proc), tmp_path / "project")


def test_without_shipping_the_worker_cannot_import_them(run_script: RunScript,
                                                        tcp_cluster: TcpCluster) -> None:  # noqa: F811
    proc = run_script(SCRIPT, files=FILES, args=(*tcp_cluster.args, "off"))
    results = last_json(proc)
    assert all(r.startswith("SerializationError") for r in results), results
    assert "No module named 'mysim'" in results[0]
    assert "No module named 'mylib'" in results[4]


def test_grain_ship_project_0_turns_it_off(run_script: RunScript,
                                           tcp_cluster: TcpCluster) -> None:  # noqa: F811
    proc = run_script(SCRIPT, files=FILES, args=tcp_cluster.args,
                      env={"GRAIN_SHIP_PROJECT": "0"})
    assert "No module named 'mysim'" in last_json(proc)[0]


def test_an_edited_module_is_shipped_again(run_script: RunScript, tcp_cluster: TcpCluster,  # noqa: F811
                                           tmp_path: Path) -> None:
    """The bundle is keyed by its content: a changed module is a new bundle."""
    first = last_json(run_script(SCRIPT, files=FILES, args=tcp_cluster.args))
    files = dict(FILES)
    files["mysim.py"] = FILES["mysim.py"].replace("x * x", "x * x + 100")
    second = last_json(run_script(SCRIPT, files=files, args=tcp_cluster.args))
    assert [r["value"] for r in first[:4]] == [0, 1, 4, 9]
    assert [r["value"] for r in second[:4]] == [100, 101, 104, 109]
    assert first[0]["module_file"] != second[0]["module_file"]


def test_too_large_a_project_fails_at_once_saying_how_to_opt_out(
        run_script: RunScript, tcp_cluster: TcpCluster) -> None:  # noqa: F811
    files = dict(FILES)
    # incompressible package data over the 32 MiB limit
    files["mylib/blob.txt"] = "placeholder"
    script = SCRIPT.replace("import json\n", "import json, os\n    os.chdir(os.path.dirname("
                            "os.path.abspath(__file__)))\n    with open('mylib/blob.txt', 'wb')"
                            " as f:\n        f.write(os.urandom(33 * 1024 * 1024))\n", 1)
    proc = run_script(script, files=files, args=tcp_cluster.args)
    assert proc.returncode != 0
    assert "ship_project=False" in proc.stderr and "GRAIN_SHIP_PROJECT=0" in proc.stderr, \
        proc.stderr[-3000:]
    proc = run_script(script, files=files, args=(*tcp_cluster.args, "off"))
    assert "No module named 'mysim'" in last_json(proc)[0]


PASSIVE = """
    import json
    import sys

    import grain
    from grain import Node, Cores
    from mysim import simulate


    async def main():
        async with grain.open_waitgroup() as wg:
            for i in range(3):
                wg.submit(Cores(1), simulate, i)
        return wg.results


    # the original's positional form: passive workers to dial, the local worker's size
    out = grain.run_combine(main, [sys.argv[1]], Node(1, 1), nolocal=True, output="off",
                            progress=False)
    print(json.dumps(out))
"""


def test_the_original_form_with_a_passive_worker_elsewhere(run_script: RunScript,
                                                           tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "network"))
    from grain_harness import Harness, free_port
    (tmp_path / "elsewhere").mkdir()
    h = Harness(tmp_path / "elsewhere")
    try:
        port = free_port()
        h.passive_worker("p1", f"grain://127.0.0.1:{port}").wait_for(
            "waiting for an executor", timeout=20)
        proc = run_script(PASSIVE, files=FILES, args=(f"127.0.0.1:{port}",),
                          env={"GRAIN_TOKEN": h.token})
        out = last_json(proc)
        assert [r["value"] for r in out] == [0, 1, 4]
        assert all(not r["module_file"].startswith(str(tmp_path / "project")) for r in out)
    finally:
        problems = h.cleanup()
        assert not problems, problems

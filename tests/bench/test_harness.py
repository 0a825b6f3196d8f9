"""Smoke test of the benchmark harness (``bench.run``): its tiniest mode, Grain's embedded
cluster and the ProcessPool floor only, in a temporary results directory. Checks the JSON
it writes has the expected shape. Never checks a timing: targets are reported by the
benchmark, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def doc(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench-results")
    p = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--only",
                        "grain,processpool", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=220)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    files = sorted(f.name for f in out.iterdir())
    assert "latest.json" in files and len(files) == 2, files
    stamped = next(f for f in files if f != "latest.json")
    assert json.loads((out / stamped).read_text()) == json.loads(
        (out / "latest.json").read_text())
    assert "Targets" in p.stdout
    return json.loads((out / "latest.json").read_text())


def test_top_level_keys(doc: dict) -> None:
    assert set(doc) >= {"meta", "systems", "results", "ratios", "targets", "errors", "runs"}
    assert doc["meta"]["smoke"] is True and doc["meta"]["rounds"] == 1
    assert set(doc["systems"]) == {"grain", "processpool"}
    assert doc["errors"] == []
    assert all(r["ok"] and r["leaked"] == [] for r in doc["runs"])


def test_every_workload_measured(doc: dict) -> None:
    common = {"cold_start_s", "rt_median_ms", "rt_p95_ms", "noop_jobs_per_s",
              "sleep_jobs_per_s", "sleep_of_ideal", "big_rt_ms", "cpu_speedup",
              "idle_rss_mib", "rt_cpu_us", "noop_cpu_us", "big_cpu_ms"}
    grain_only = {"pin_mismatches", "cpu_pin_mismatches", "stall_max_ms",
                  "place_step_max_ms", "place_per_s", "place_users_step_max_ms",
                  "place_users_per_s", "idle_core_rss_mib"}
    assert set(doc["results"]["grain"]) >= common | grain_only
    assert set(doc["results"]["processpool"]) >= common
    assert not set(doc["results"]["processpool"]) & grain_only
    for m in doc["results"]["grain"].values():
        assert set(m) >= {"median", "min", "max", "values", "n", "unit", "better"}
        assert m["min"] <= m["median"] <= m["max"]


def test_ratios_and_targets(doc: dict) -> None:
    assert set(doc["ratios"]["grain"]["rt_median_ms"]) == {"processpool"}
    targets = {t["target"]: t for t in doc["targets"] if t["system"] == "grain"}
    assert "round trip <= 2.5x ProcessPool" in targets
    assert "placement step <= 2 ms (1,000 x 64)" in targets
    assert targets["no-op jobs/s >= 20x Ray"]["met"] is None  # Ray not run: n/a
    assert targets["round trip <= 1/2 of Ray"]["met"] is None  # Ray not run: n/a
    assert all(t["met"] in (True, False, None) for t in targets.values())
    # correctness, not speed: every job ran on exactly the cores it was given
    assert doc["results"]["grain"]["pin_mismatches"]["max"] == 0


def test_floors_and_capacity_helpers() -> None:
    """The relay chains and the capacity table work (figures not checked). In a
    subprocess: ``bench`` here would be this test package."""
    code = """
from bench.capacity import capacity_table
from bench.floors import chain_roundtrip
for kind in ("raw", "trio"):
    r = chain_roundtrip(kind, 20, warm=2)
    assert r["rt_median_ms"] > 0 and r["rt_p95_ms"] >= r["rt_median_ms"], r
    assert r["rt_cpu_us"] > 0, r
rows = capacity_table([{"jobs_per_s": 1000.0, "executor_cpu_us_per_job": 50.0}])
assert [r["job_s"] for r in rows] == [1, 10, 60], rows
assert rows[0]["cores_measured"] == 1000.0 and rows[0]["cores_one_core"] == 20_000.0, rows
print("fine")
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and "fine" in p.stdout, p.stdout + p.stderr


def test_tree_cpu_counts_the_descendants() -> None:
    """The CPU figures (per round trip, per job) count every process of a system, not
    only the one measuring: a child that burns 0.3 s of CPU shows in the difference
    while it lives. In a subprocess, as above."""
    code = """
import subprocess, sys
from bench.procs import tree_cpu_s
burn = ("import sys, time\\n"
        "while time.process_time() < 0.3: pass\\n"
        "print('burnt', flush=True)\\n"
        "sys.stdin.read()")
before = tree_cpu_s()
child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "burnt"
used = tree_cpu_s() - before      # the child is alive: it waits for its stdin to end
child.stdin.close()
child.wait()
assert used >= 0.3, used
print("fine")
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and "fine" in p.stdout, p.stdout + p.stderr

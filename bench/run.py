"""``python -m bench.run [--quick] [--rounds N] [--only NAMES] [--out DIR]``: the benchmark.

Runs every workload (``bench.workloads``) on every system (``bench.systems``): Grain's
embedded cluster, Grain over TCP on loopback (``grain executor`` + ``grain worker``
processes), Dask LocalCluster, Ray local and a stdlib ProcessPoolExecutor (the floor),
plus a bare TCP echo for the 10 MiB yardstick. Each measurement is a fresh subprocess
with a timeout; rounds are interleaved (every workload on every system, the system order
rotating from round to round) and repeated. Prints tables of medians with min-max,
Grain's ratios to each peer, and the targets as met / not met; writes the JSON to
``bench/results/<timestamp>.json`` and ``bench/results/latest.json``.

Targets are reported, never asserted: a benchmark is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil

from . import procs
from .jobs import burn
from .systems import SYSTEMS, grain_cli_status
from .workloads import WORKLOADS, sizes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRAINS = ("grain", "grain-tcp")
PEERS = ("dask", "ray", "processpool")
FLOORS = ("bare-tcp", "trio-relay", "raw-relay")

#: metric -> (unit, which way is better, label)
METRICS: dict[str, tuple[str, str, str]] = {
    "cold_start_s": ("s", "lower", "cold start to first result"),
    "cold_ready_s": ("s", "lower", "  of which: system up"),
    "rt_median_ms": ("ms", "lower", "round trip, median"),
    "rt_p95_ms": ("ms", "lower", "round trip, p95"),
    "rt_cpu_us": ("µs", "lower", "  CPU per round trip, all processes"),
    "noop_jobs_per_s": ("jobs/s", "higher", "no-ops, all at once"),
    "noop_cpu_us": ("µs", "lower", "  CPU per no-op job, all processes"),
    "sleep_jobs_per_s": ("jobs/s", "higher", "1 ms sleeps"),
    "sleep_of_ideal": ("x", "higher", "  1 ms sleeps / ideal"),
    "big_rt_ms": ("ms", "lower", "10 MiB round trip"),
    "big_cpu_ms": ("ms", "lower", "  CPU per 10 MiB round trip, all processes"),
    "cpu_1w_s": ("s", "lower", "8 CPU jobs, 1 worker"),
    "cpu_2w_s": ("s", "lower", "8 CPU jobs, 2 workers"),
    "cpu_speedup": ("x", "higher", "CPU speed-up 2 over 1"),
    "cpu_pin_mismatches": ("jobs", "lower", "  CPU jobs mis-pinned"),
    "idle_rss_mib": ("MiB", "lower", "idle RSS, all processes"),
    "idle_pss_mib": ("MiB", "lower", "  idle PSS"),
    "idle_procs": ("procs", "lower", "  processes"),
    "pin_jobs": ("jobs", "higher", "pinning: jobs checked"),
    "pin_mismatches": ("jobs", "lower", "pinning: mismatches"),
    "pin_runner_pids": ("procs", "lower", "  runner processes seen"),
    "idle_core_rss_mib": ("MiB", "lower", "  idle RSS, client+executor+worker"),
    "queue_rss_before_mib": ("MiB", "lower", "executor RSS, empty"),
    "queue_rss_mib": ("MiB", "lower", "executor RSS, 1M queued"),
    "queue_bytes_per_job": ("B", "lower", "  executor per queued job"),
    "queue_client_rss_mib": ("MiB", "lower", "  client RSS, 1M queued"),
    "queue_client_bytes_per_job": ("B", "lower", "  client per queued job"),
    "queue_submit_s": ("s", "lower", "  submit 1M (client)"),
    "queue_accept_s": ("s", "lower", "  1M queued (barrier)"),
    "queue_cancel_s": ("s", "lower", "  cancel 1M"),
    "queue_rss_after_cancel_mib": ("MiB", "lower", "  executor RSS after cancel"),
    "stall_max_ms": ("ms", "lower", "longest event-loop stall, 1M jobs"),
    "stall_p99_ms": ("ms", "lower", "  stall p99 (worst phase)"),
    "stall_submit_ms": ("ms", "lower", "  longest while submitting"),
    "stall_queued_ms": ("ms", "lower", "  longest while queued"),
    "stall_cancel_ms": ("ms", "lower", "  longest while cancelling"),
    "stall_leave_ms": ("ms", "lower", "  longest while the client leaves"),
    "stall_after_ms": ("ms", "lower", "  longest while freed memory goes back"),
    "stall_place_ms": ("ms", "lower", "longest stall, 1,000 workers x 64 come with jobs queued"),
    "place_step_max_ms": ("ms", "lower", "placement step, 1,000x64 cores, longest"),
    "place_step_p99_ms": ("ms", "lower", "  placement step p99"),
    "place_step_wall_max_ms": ("ms", "lower", "  longest step, wall (gc included)"),
    "place_per_s": ("/s", "higher", "  placements per second"),
    "place_bytes_per_job": ("B", "lower", "  placement memory per queued job"),
    "place_users_step_max_ms": ("ms", "lower", "  with 1,000 users: step, longest"),
    "place_users_step_p99_ms": ("ms", "lower", "  with 1,000 users: step p99"),
    "place_users_per_s": ("/s", "higher", "  with 1,000 users: placements per second"),
    "place_bob_releases": ("releases", "lower", "  Bob placed after (simulated)"),
    "cap10_jobs_per_s": ("jobs/s", "higher", "capacity, 10 workers x 64: dispatched"),
    "cap10_cpu_us": ("µs", "lower", "  executor CPU per job"),
    "cap10_rss_mib": ("MiB", "lower", "  executor RSS"),
    "cap10_wait_p99_ms": ("ms", "lower", "  message wait p99, loaded"),
    "cap10_light_wait_p99_ms": ("ms", "lower", "  message wait p99, 16 in flight"),
    "cap100_jobs_per_s": ("jobs/s", "higher", "capacity, 100 workers x 64: dispatched"),
    "cap100_cpu_us": ("µs", "lower", "  executor CPU per job"),
    "cap100_rss_mib": ("MiB", "lower", "  executor RSS"),
    "cap100_wait_p99_ms": ("ms", "lower", "  message wait p99, loaded"),
    "cap100_light_wait_p99_ms": ("ms", "lower", "  message wait p99, 16 in flight"),
    "cap1000_jobs_per_s": ("jobs/s", "higher", "capacity, 1,000 workers x 64: dispatched"),
    "cap1000_cpu_us": ("µs", "lower", "  executor CPU per job"),
    "cap1000_rss_mib": ("MiB", "lower", "  executor RSS"),
    "cap1000_wait_p99_ms": ("ms", "lower", "  message wait p99, loaded"),
    "cap1000_light_wait_p99_ms": ("ms", "lower", "  message wait p99, 16 in flight"),
    "cap_busy_wait_max_ms": ("ms", "lower", "busy 1,000 x 64 (60,000 running): longest wait"),
    "cap_busy_wait_p99_ms": ("ms", "lower", "  message wait p99, 16 in flight"),
    "cap_busy_rss_mib": ("MiB", "lower", "  executor RSS"),
    "cap_cores_1s": ("cores", "higher", "  cores one executor serves, 1 s jobs"),
    "cap_cores_10s": ("cores", "higher", "  cores one executor serves, 10 s jobs"),
    "cap_cores_60s": ("cores", "higher", "  cores one executor serves, 60 s jobs"),
    "bob_wait_ms": ("ms", "lower", "Bob's wait behind Alice's 3,000 x 20 ms"),
    "bob_wait_max_ms": ("ms", "lower", "  Bob's longest wait"),
}


def calibrate_burn(seconds: float) -> int:
    """Loop count for ``jobs.burn`` taking about ``seconds`` on this machine."""
    n = 1_000_000
    best = min(_timed(burn, n) for _ in range(3))
    return max(10_000, int(n * seconds / best))


def _timed(fn: Any, *a: Any) -> float:
    t = time.perf_counter()
    fn(*a)
    return time.perf_counter() - t


def run_child(system: str, workload: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One measurement in a fresh process; never raises."""
    env = dict(os.environ)
    env["PYTHONPATH"] = _pythonpath()
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # a scratch working directory: nothing shadows PYTHONPATH, and files the systems
    # write there (Dask's worker space, logs) go away with it
    cwd = tempfile.mkdtemp(prefix="grain-bench-")
    out = os.path.join(cwd, "result.json")
    cpu0, ru0 = _busy(), _children_cpu()
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "bench.child", system, workload,
                          json.dumps(params), out], cwd=cwd, env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    try:
        log, _ = p.communicate(timeout=timeout)
        with open(out) as f:
            res = json.load(f)
    except subprocess.TimeoutExpired:
        procs.kill_tree(p.pid)
        log, _ = p.communicate()
        res = {"ok": False, "error": f"timed out after {timeout:g}s (process tree killed)"}
    except (OSError, ValueError) as e:
        res = {"ok": False, "error": f"the measuring process exited {p.returncode} without "
                                     f"a result ({e})"}
    except BaseException:  # Ctrl-C or SIGTERM: stop the measurement too
        procs.kill_tree(p.pid)
        p.wait()
        raise
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    wall = time.perf_counter() - t
    # CPU used on this machine during the measurement by processes other than ours
    # (other users' jobs): the figures of a measurement that shared the cores are suspect
    foreign = max(0.0, (_busy() - cpu0) - (_children_cpu() - ru0)) / wall
    res.update(system=system, workload=workload, wall_s=wall, foreign_cores=foreign)
    if not res.get("ok") and log:
        res["log_tail"] = log.decode(errors="replace")[-2000:]
    return dict(res)


def _busy() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _pythonpath() -> str:
    """The caller's PYTHONPATH first (to measure another checkout of ``grain``, e.g. a
    snapshot of a commit), then the repository (for ``bench`` itself)."""
    return os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), ROOT) if p)


def grain_source() -> dict[str, Any]:
    """Which ``grain`` the measurements ran: its directory and, in a git checkout, the
    commit and the files that differed from it."""
    env = dict(os.environ, PYTHONPATH=_pythonpath())
    out: dict[str, Any] = {}
    try:
        path = subprocess.run([sys.executable, "-c", "import grain, os; "
                               "print(os.path.dirname(os.path.dirname(grain.__file__)))"],
                              capture_output=True, text=True, env=env, timeout=60,
                              cwd=tempfile.gettempdir(), check=True).stdout.strip()
        out["path"] = path
        head = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=30)
        if head.returncode == 0:
            out["commit"] = head.stdout.strip()
            dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--", "grain"],
                                   capture_output=True, text=True, timeout=30).stdout
            out["uncommitted"] = [ln[3:] for ln in dirty.splitlines()]
        elif os.path.exists(os.path.join(path, "COMMIT")):
            with open(os.path.join(path, "COMMIT")) as f:
                out["commit"] = f.read().strip()
    except (OSError, subprocess.SubprocessError) as e:
        out["error"] = str(e)
    return out


def availability(systems: list[str]) -> dict[str, str | None]:
    """None where the system can run, else why not (the rows say "unavailable")."""
    out: dict[str, str | None] = {s: None for s in systems}
    if "grain-tcp" in out:
        out["grain-tcp"] = grain_cli_status()
    if "dask" in out and importlib.util.find_spec("distributed") is None:
        out["dask"] = "dask[distributed] is not installed (pip install -e '.[bench]')"
    if "ray" in out and importlib.util.find_spec("ray") is None:
        out["ray"] = "ray is not installed (no wheel on the package index for this platform?)"
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    vals: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        if not r.get("ok"):
            continue
        for k, v in r["metrics"].items():
            if k.startswith("_") or not isinstance(v, int | float):
                continue
            vals.setdefault(r["system"], {}).setdefault(k, []).append(float(v))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for s, ms in vals.items():
        for k, xs in ms.items():
            unit, better, label = METRICS.get(k, ("", "lower", k))
            out.setdefault(s, {})[k] = {
                "median": statistics.median(xs), "min": min(xs), "max": max(xs),
                "values": xs, "n": len(xs), "unit": unit, "better": better, "label": label}
    return out


def _med(summary: dict[str, Any], system: str, metric: str) -> float | None:
    m = summary.get(system, {}).get(metric)
    return m["median"] if m else None


def ratios(summary: dict[str, Any]) -> dict[str, Any]:
    """Grain's median divided by each peer's (and the floor's, and the bare echo's)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for g in GRAINS:
        for metric, m in summary.get(g, {}).items():
            for peer in (*PEERS, *FLOORS):
                pv = _med(summary, peer, metric)
                if pv:
                    out.setdefault(g, {}).setdefault(metric, {})[peer] = m["median"] / pv
    return out


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets, each met / not met / n/a (a peer or Grain row missing)."""
    rows: list[dict[str, Any]] = []

    def rel(g: str, metric: str, peer: str, op: str, factor: float, text: str) -> None:
        gv, pv = _med(summary, g, metric), _med(summary, peer, metric)
        if gv is None or pv is None:
            rows.append({"system": g, "target": text, "met": None, "value": gv,
                         "limit": None, "note": f"no {g if gv is None else peer} figure"})
            return
        limit = factor * pv
        met = gv <= limit if op == "<=" else gv >= limit
        rows.append({"system": g, "target": text, "met": met, "value": gv, "limit": limit,
                     "ratio": gv / pv, "unit": METRICS[metric][0]})

    def absolute(g: str, metric: str, op: str, limit: float, text: str) -> None:
        gv = _med(summary, g, metric)
        if gv is None:
            rows.append({"system": g, "target": text, "met": None, "value": None,
                         "limit": limit, "note": f"no {g} figure"})
            return
        met = gv <= limit if op == "<=" else gv >= limit
        rows.append({"system": g, "target": text, "met": met, "value": gv, "limit": limit,
                     "unit": METRICS[metric][0]})

    for g in GRAINS:
        if g not in summary:
            continue
        _scale_targets(g, rel, absolute)
        rel(g, "rt_median_ms", "processpool", "<=", 2.5, "round trip <= 2.5x ProcessPool")
        rel(g, "rt_median_ms", "ray", "<=", 0.5, "round trip <= 1/2 of Ray")
        rel(g, "noop_jobs_per_s", "processpool", ">=", 0.8, "no-op jobs/s >= 0.8x ProcessPool")
        rel(g, "noop_jobs_per_s", "ray", ">=", 4.0, "no-op jobs/s >= 4x Ray")
        absolute(g, "sleep_of_ideal", ">=", 0.8, "1 ms sleeps >= 0.8x ideal")
        rel(g, "cold_start_s", "dask", "<=", 1.0, "cold start <= Dask")
        absolute(g, "cpu_speedup", ">=", 1.9, "CPU speed-up >= 1.9")
        rel(g, "idle_rss_mib", "dask", "<=", 0.75, "idle RSS <= 3/4 of Dask")
        rel(g, "big_rt_ms", "bare-tcp", "<=", 2.5, "10 MiB round trip <= 2.5x bare TCP echo")
        absolute(g, "pin_mismatches", "<=", 0, "pinning: no mismatches")
        absolute(g, "cpu_pin_mismatches", "<=", 0, "pinning (CPU jobs): no mismatches")
    return rows


def _scale_targets(g: str, rel: Any, absolute: Any) -> None:
    """The targets of "one executor for a thousand nodes", first in the table."""
    if g == "grain-tcp":
        rel(g, "rt_median_ms", "trio-relay", "<=", 1.0,
            "round trip <= 1.0x trio relays (client->relay->relay->echo)")
        rel(g, "rt_median_ms", "raw-relay", "<=", 1.0, "round trip <= raw-socket relays")
        rel(g, "big_rt_ms", "bare-tcp", "<=", 2.0, "10 MiB round trip <= 2.0x bare TCP echo")
        absolute(g, "queue_bytes_per_job", "<=", 512, "executor <= 512 B per queued job (1M)")
        absolute(g, "queue_client_bytes_per_job", "<=", 1024,
                 "client <= 1 KB per queued job (1M)")
        absolute(g, "idle_core_rss_mib", "<=", 100,
                 "idle executor+worker+client <= 100 MiB")
        absolute(g, "bob_wait_ms", "<=", 30, "Bob's job starts within ~1 job (<= 30 ms)")
        absolute(g, "cap_busy_wait_max_ms", "<=", 5.0,
                 "stall <= a few ms (5) with 1,000 workers and 60,000 jobs running")
    else:
        absolute(g, "place_step_max_ms", "<=", 2.0, "placement step <= 2 ms (1,000 x 64)")
        absolute(g, "place_per_s", ">=", 200_000, "placements >= 200,000/s")
        absolute(g, "place_users_step_max_ms", "<=", 2.0,
                 "placement step <= 2 ms with 1,000 users")
        absolute(g, "stall_max_ms", "<=", 5.0, "event-loop stall <= a few ms (5), 1M jobs")
    rel(g, "noop_jobs_per_s", "ray", ">=", 20.0, "no-op jobs/s >= 20x Ray")


METRICS_BY_TARGET = {"round trip <= 1/2 of Ray": "ms", "no-op jobs/s >= 4x Ray": "jobs/s",
                     "cold start <= Dask": "s", "idle RSS <= 3/4 of Dask": "MiB"}


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if float(v).is_integer() and abs(v) < 1e9:
        return f"{int(v):,}"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def print_report(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    con = Console(width=max(180, Console().width))
    summary, systems = doc["results"], doc["systems"]
    src = doc["meta"].get("grain_source", {})
    con.print(f"grain from {src.get('path')} at {src.get('commit', '?')[:12]}"
              + (f" with uncommitted changes to {', '.join(src['uncommitted'])}"
                 if src.get("uncommitted") else ""))
    cols = [s for s in SYSTEMS if s in systems]
    t = Table(title=f"Grain benchmark: median (min-max) over {doc['meta']['rounds']} "
                    f"round(s){' [quick]' if doc['meta']['quick'] else ''}")
    t.add_column("metric")
    t.add_column("unit")
    for s in cols:
        t.add_column(s, justify="right")
    for metric, (unit, better, label) in METRICS.items():
        if not any(metric in summary.get(s, {}) for s in cols):
            continue
        row = [label, unit + (" ↓" if better == "lower" else " ↑")]
        for s in cols:
            m = summary.get(s, {}).get(metric)
            if m is None:
                row.append("[dim]unavailable[/]" if systems[s]["unavailable"] else "")
            elif m["n"] > 1:
                row.append(f"{_fmt(m['median'])} [dim]({_fmt(m['min'])}-{_fmt(m['max'])})[/]")
            else:
                row.append(_fmt(m["median"]))
        t.add_row(*row)
    con.print(t)

    rt = Table(title="Grain's median ÷ peer's median (↓ lower is better, ↑ higher is better)")
    rt.add_column("metric")
    pairs = [(g, p) for g in GRAINS for p in (*PEERS, *FLOORS) if g in doc["ratios"]]
    pairs = [(g, p) for g, p in pairs
             if any(p in d for d in doc["ratios"][g].values())]
    for g, p in pairs:
        rt.add_column(f"{g} / {p}", justify="right")
    for metric, (_, better, label) in METRICS.items():
        cells = [doc["ratios"].get(g, {}).get(metric, {}).get(p) for g, p in pairs]
        if all(c is None for c in cells):
            continue
        rt.add_row(f"{label} {'↓' if better == 'lower' else '↑'}",
                   *[f"{c:.2f}" if c is not None else "" for c in cells])
    con.print(rt)

    tt = Table(title="Targets (reported, never asserted)")
    for c in ("system", "target", "value", "limit", "result"):
        tt.add_column(c)
    for r in doc["targets"]:
        res = {True: "[green]met[/]", False: "[red]not met[/]",
               None: f"[yellow]n/a[/] {r.get('note', '')}"}[r["met"]]
        tt.add_row(r["system"], r["target"],
                   _fmt(r["value"]) + " " + r.get("unit", METRICS_BY_TARGET.get(r["target"], "")),
                   _fmt(r["limit"]), res)
    con.print(tt)
    for s, info in systems.items():
        if info["unavailable"]:
            con.print(f"[yellow]{s}: unavailable[/] — {info['unavailable']}")
    for e in doc["errors"]:
        con.print(f"[red]error[/] {e['system']} {e['workload']} round {e['round']}: "
                  f"{e['error']}")
    busy = [r for r in doc["runs"] if r.get("foreign_cores", 0) > 0.25]
    if busy:
        con.print(f"[yellow]{len(busy)} of {len(doc['runs'])} measurements shared the "
                  f"machine with other processes using > 0.25 cores (max "
                  f"{max(r['foreign_cores'] for r in busy):.2f}); see runs[].foreign_cores[/]")
    leaks = [r for r in doc["runs"] if r.get("leaked")]
    for r in leaks:
        con.print(f"[yellow]leaked processes stopped after[/] {r['system']} {r['workload']}: "
                  f"{', '.join(r['leaked'])}")


def write(doc: dict[str, Any], out_dir: str) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    stamp = doc["meta"]["started"].replace(":", "").replace("-", "")[:15]
    paths = (os.path.join(out_dir, f"{stamp}{'-quick' if doc['meta']['quick'] else ''}.json"),
             os.path.join(out_dir, "latest.json"))
    for path in paths:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    return paths


def parse_only(only: list[str]) -> tuple[list[str], list[str]]:
    names = [x.strip() for o in only for x in o.split(",") if x.strip()]
    bad = [n for n in names if n not in SYSTEMS and n not in WORKLOADS]
    if bad:
        raise SystemExit(f"--only: unknown name(s) {', '.join(bad)}; systems: "
                         f"{', '.join(SYSTEMS)}; workloads: {', '.join(WORKLOADS)}")
    systems = [s for s in SYSTEMS if s in names] or list(SYSTEMS)
    workloads = [w for w in WORKLOADS if w in names] or list(WORKLOADS)
    return systems, workloads


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smaller workloads and 1 round by default (under 3 minutes)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny workloads, 1 round: checks the harness, figures meaningless")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds of every workload on every system (default 3; --quick 1)")
    ap.add_argument("--only", action="append", default=[],
                    help="systems and/or workloads, comma-separated (e.g. grain,processpool "
                         "or noop,roundtrip); default all")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"),
                    help="where the JSON goes (default bench/results)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per measurement before its process tree is killed "
                         "(default 300; --quick 120)")
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    a.quick = a.quick or a.smoke
    rounds = a.rounds or (1 if a.quick else 3)
    timeout = a.timeout or (120.0 if a.quick else 300.0)
    systems, workloads = parse_only(a.only)
    started = dt.datetime.now().astimezone()
    t_start = time.perf_counter()
    params = sizes(a.quick, a.smoke)
    params["burn_n"] = calibrate_burn(params["cpu_seconds"])
    avail = availability(systems)
    runs: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for rnd in range(rounds):
        order = systems[rnd % len(systems):] + systems[:rnd % len(systems)]
        for w in workloads:
            for s in order:
                if s not in WORKLOADS[w][1] or avail.get(s):
                    continue
                r = run_child(s, w, params, timeout)
                r["round"] = rnd + 1
                runs.append(r)
                status = "ok" if r.get("ok") else f"FAILED: {r.get('error')}"
                print(f"[round {rnd + 1}/{rounds}] {w:<10} {s:<12} {r['wall_s']:6.1f}s "
                      f"(others used {r['foreign_cores']:.2f} cores) {status}",
                      file=sys.stderr, flush=True)
                if r.get("unavailable"):
                    avail[s] = r["error"]
                elif not r.get("ok"):
                    errors.append({k: r.get(k) for k in
                                   ("system", "workload", "round", "error", "traceback",
                                    "log_tail")})
    summary = summarize(runs)
    foreign = [r["foreign_cores"] for r in runs if "foreign_cores" in r]
    doc = {
        "meta": {
            "started": started.isoformat(timespec="seconds"),
            "duration_s": time.perf_counter() - t_start,
            "quick": a.quick, "smoke": a.smoke, "rounds": rounds, "params": params,
            "host": {"cpus_usable": len(os.sched_getaffinity(0)),
                     "cpus_online": os.cpu_count(), "python": platform.python_version(),
                     "platform": platform.platform(), "machine": platform.machine()},
            "versions": _versions(),
            "grain_source": grain_source(),
            "load_average_end": os.getloadavg(),
            "foreign_cores_median": statistics.median(foreign) if foreign else None,
            "workloads": {w: WORKLOADS[w][2] for w in workloads},
        },
        "systems": {s: {"unavailable": avail.get(s)} for s in systems},
        "results": summary,
        "ratios": ratios(summary),
        "targets": targets(summary),
        "errors": errors,
        "runs": runs,
    }
    paths = write(doc, a.out)
    print_report(doc)
    print(f"wrote {paths[0]} and {paths[1]} in {time.perf_counter() - t_start:.0f}s")
    return 0


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version
    out: dict[str, str | None] = {}
    for d in ("grain", "dask", "distributed", "ray", "trio"):
        try:
            out[d] = version(d)
        except PackageNotFoundError:
            out[d] = None
    return out


if __name__ == "__main__":
    sys.exit(main())

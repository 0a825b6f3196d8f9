"""The executor's web page in a real browser: headless Chromium loads ``/`` from a real
executor with two workers while two users' programs (run as ``python main.py``, their job
functions in ``__main__``) have jobs running, queued and failed, and the test reads what
the page renders: worker names, each core's job (by function name) and user, the queue
per user, the failure with its error as text, and a live update without a reload.

``GRAIN_DOCS_SCREENSHOT=1`` also writes the screenshot to docs/dashboard.png.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
from chromium import Chromium
from grain_harness import ExecutorProc, Harness, wait_until

pytestmark = pytest.mark.timeout(180)

DOCS = Path(__file__).resolve().parents[2] / "docs"

USER_PROGRAM = '''
import json
import os
import sys
import time

import numpy as np

import grain
from grain import Cores

address, token_file, stop, jobs, fail = sys.argv[1:6]


def {fn}(stop, i):
    """Runs until the test lets it finish."""
    while not os.path.exists(stop):
        time.sleep(0.02)
    return int(np.int64(i) * 2)


def explode(frame):
    raise ValueError(f"<img src=x id=injected onerror=\\"document.title='pwned'\\"> bad frame {{frame}}")


async def main():
    if fail == "1":
        try:
            await grain.exec1(Cores(1), explode, 7)
        except ValueError as e:
            print("failed as expected:", e, flush=True)
    async with grain.open_waitgroup() as wg:
        for i in range(int(jobs)):
            wg.submit(Cores(1), {fn}, stop, i)
    print(json.dumps(wg.results), flush=True)


if __name__ == "__main__":
    token = open(token_file).read().strip()
    grain.run_combine(main, address=address, token=token, heartbeat=0.5, timeout=2)
'''

# What the page shows, read from its DOM (text only: what a person sees).
READ_PAGE = textwrap.dedent("""
    (() => {
      const text = e => e ? e.textContent.trim() : null;
      const rows = sel => [...document.querySelectorAll(sel)].map(
          tr => [...tr.cells].map(td => td.textContent.trim()));
      return {
        updates: Number(document.body.dataset.updates || 0),
        live: document.getElementById("live").className,
        title: document.title,
        injected: document.querySelectorAll("#injected, main img").length,
        recovering: !document.getElementById("recovering").hidden,
        workers: [...document.querySelectorAll("article.worker")].map(w => ({
          name: text(w.querySelector("h3")),
          cores: [...w.querySelectorAll(".core")].map(c => ({
            id: c.dataset.core, busy: c.classList.contains("busy"),
            job: text(c.querySelector(".cjob")), title: c.title})),
          jobs: rows(`article.worker[data-worker="${w.dataset.worker}"] tr.running-job`),
        })),
        users: rows("#users tbody tr"),
        queue: rows("#queue tbody tr"),
        failures: rows("#failures tbody tr.failure"),
        tiles: Object.fromEntries([...document.querySelectorAll(".tile")].map(
            t => [t.dataset.tile, text(t.querySelector(".value"))])),
        charts: [...document.querySelectorAll("svg.chart")].map(
            s => s.querySelectorAll("path.series").length),
      };
    })()
""")


def _by_role(h: Harness) -> tuple[dict[str, Path], Path]:
    """Two users with their own tokens, and the workers' secret."""
    tokens = {"alice": "alice-token-0123456789", "bob": "bob-token-9876543210"}
    (h.tmp / "clients").write_text("".join(f"{u} {t}\n" for u, t in tokens.items()))
    files = {}
    for user, tok in tokens.items():
        files[user] = h.tmp / f"{user}.token"
        files[user].write_text(tok + "\n")
    worker_token = h.tmp / "worker.token"
    worker_token.write_text("worker-secret-abcdef\n")
    return files, worker_token


def _program(h: Harness, user: str, fn: str) -> Path:
    d: Path = h.tmp / user
    d.mkdir()
    (d / "main.py").write_text(USER_PROGRAM.format(fn=fn))
    return d / "main.py"


def _cores_by_worker(st: dict[str, Any]) -> dict[str, set[tuple[str, str, str]]]:
    """(core, job, user) per worker, from a /status document."""
    return {w["name"]: {(c, j["job"], j["user"]) for c, j in w["core_map"].items()}
            for w in st["workers"]}


def _cores_on_page(page: dict[str, Any]) -> dict[str, set[tuple[str, str, str]]]:
    out = {}
    for w in page["workers"]:
        out[w["name"]] = {(c["id"], c["job"], c["title"].split(" · ")[1])
                          for c in w["cores"] if c["busy"]}
    return out


def test_the_page_shows_workers_jobs_users_queue_and_failures_live(
        grain_procs: Harness, chromium: Chromium, tmp_path: Path) -> None:
    h = grain_procs
    tokens, worker_token = _by_role(h)
    ex: ExecutorProc = h.executor(extra=["--client-tokens", str(h.tmp / "clients"),
                                         "--worker-token-file", str(worker_token)])
    h.worker("node-a", ex, cores="0", token_file=worker_token)
    h.worker("node-b", ex, cores="1", token_file=worker_token)
    stops = {u: h.tmp / f"stop-{u}" for u in ("alice", "bob")}

    # bob's one job takes a core; alice's first job fails, then one runs and two queue
    bob = h.python(_program(h, "bob", "train_model"), ex.address, str(tokens["bob"]),
                   str(stops["bob"]), "1", "0", log="bob")
    ex.wait_status(lambda st: any(u["name"] == "bob" and u["running_jobs"] == 1
                                  for u in st["users"]), 30, "bob's job to run")
    alice = h.python(_program(h, "alice", "render_frame"), ex.address, str(tokens["alice"]),
                     str(stops["alice"]), "3", "1", log="alice")
    st = ex.wait_status(lambda st: any(u["name"] == "alice" and u["running_jobs"] == 1
                                       and u["queued_jobs"] == 2 for u in st["users"]),
                        30, "alice's first job to run and two to queue")
    assert st["failures"] and st["failures"][0]["job"] == "explode"

    page = chromium.page()
    page.navigate(ex.http + "/")
    seen = page.wait_for(READ_PAGE, lambda p: p["updates"] >= 2 and p["live"] == "live on"
                         and len(p["workers"]) == 2 and p["queue"], 30,
                         "the page to render and go live over /events")

    # the workers by name, each core with the job (its function) and user that hold it
    assert sorted(w["name"] for w in seen["workers"]) == ["node-a", "node-b"]
    on_page = _cores_on_page(seen)
    assert sorted(j for cores in on_page.values() for _, j, _ in cores) == [
        "render_frame", "train_model"], on_page
    assert {(j, u) for cores in on_page.values() for _, j, u in cores} == {
        ("render_frame", "alice"), ("train_model", "bob")}
    # ... the same as /status says (the jobs do not move until the test lets them)
    assert on_page == _cores_by_worker(ex.status())
    jobs = [r for w in seen["workers"] for r in w["jobs"]]
    assert sorted((r[0], r[1]) for r in jobs) == [("render_frame", "alice"),
                                                  ("train_model", "bob")]
    # users with their figures, the queue per user, the failure with its error as text
    users = {r[0]: r for r in seen["users"]}
    assert set(users) == {"alice", "bob"}
    assert users["alice"][2:5] == ["1", "2", "1"] and users["bob"][2:5] == ["1", "0", "1"]
    assert users["alice"][6] == "50.0%" and users["alice"][8] == "1"
    assert [(q[0], q[1], q[2], q[3]) for q in seen["queue"]] == [
        ("alice", "Cores(1)", "2", "render_frame")]
    (fail,) = seen["failures"]
    assert fail[1:5] == ["alice", "explode", fail[3], "raised"] and fail[3] in ("node-a",
                                                                                "node-b")
    assert fail[5].startswith("ValueError: <img src=x id=injected onerror=")
    assert seen["injected"] == 0 and seen["title"] != "pwned"   # shown as text, never run
    assert seen["tiles"]["workers"] == "2" and seen["tiles"]["cores in use"] == "2 / 2"
    assert seen["tiles"]["running"] == "2" and seen["tiles"]["queued"] == "2"
    assert seen["charts"] == [2, 2] and not seen["recovering"]
    page.screenshot(tmp_path / "dashboard.png")

    # live: bob's job ends, alice's next job takes its core; the page follows, no reload
    before = seen["updates"]
    stops["bob"].write_text("")

    def bob_done(p: dict[str, Any]) -> bool:
        # bob's row goes with his session; while it is there (a client that left without
        # saying goodbye keeps it for its grace) it shows nothing running, one finished
        return all(u[2] == "0" and u[7] == "1" for u in p["users"] if u[0] == "bob")
    after = page.wait_for(READ_PAGE, lambda p: p["updates"] > before and sorted(
        j for cores in _cores_on_page(p).values() for _, j, _ in cores) == [
        "render_frame", "render_frame"] and bob_done(p), 30,
        "the page to show alice's jobs on both cores, and bob's job done")
    assert [(q[0], q[2]) for q in after["queue"]] == [("alice", "1")]
    assert after["users"][0][:5] == ["alice", "1", "2", "1", "2"]
    assert float(after["tiles"]["jobs / s"]) >= 0
    assert not page.errors, page.errors

    if os.environ.get("GRAIN_DOCS_SCREENSHOT"):
        page.screenshot(DOCS / "dashboard.png")
    page.close()

    stops["alice"].write_text("")
    for proc in (bob, alice):
        assert proc.wait(60) == 0
    logs = {p.name: p for p in sorted(h.tmp.glob("*.log"))}
    outs = {u: next(p.read_text() for n, p in logs.items() if n.endswith(f"-{u}.log"))
            for u in ("alice", "bob")}
    assert json.loads(outs["bob"].strip().splitlines()[-1]) == [0]
    assert json.loads(outs["alice"].strip().splitlines()[-1]) == [0, 2, 4]
    assert "failed as expected: <img src=x" in outs["alice"]
    wait_until(lambda: ex.status()["running_jobs"] == 0, 20, "the executor to be idle")


def test_after_a_restart_the_page_says_what_the_executor_waits_for(
        grain_procs: Harness, chromium: Chromium) -> None:
    """The executor is killed while a job runs and its client dies too; a new executor on
    the same address gets the job back from its worker and waits for the client to claim
    it: the page (and `grain status`) say so, and show the job on its core."""
    import signal

    from grain_harness import free_port
    h = grain_procs
    port, http_port = free_port(), free_port()
    ex = h.executor(port=port, http_port=http_port)
    h.worker("node-a", ex, cores="0")
    stop = h.tmp / "stop"
    user = h.python(_program(h, "carol", "long_sim"), ex.address, str(h.token_file),
                    str(stop), "1", "0", log="carol")
    ex.wait_status(lambda st: st["running_jobs"] == 1, 30, "the job to run")
    user.kill()
    user.wait(5)
    ex.kill(signal.SIGKILL)
    ex.popen.wait(5)
    again = h.executor(port=port, http_port=http_port, name="executor-2")
    st = again.wait_status(lambda st: (st["recovering"] or {}).get(
        "jobs_waiting_for_their_client") == 1, 30, "the worker to report the orphaned job")

    page = chromium.page()
    page.navigate(again.http + "/")
    seen = page.wait_for(READ_PAGE, lambda p: p["updates"] >= 1 and p["workers"], 30,
                         "the page to render")
    assert seen["recovering"]
    banner = page.evaluate("document.getElementById('recovering').textContent")
    assert "1 running jobs waiting for their client" in banner, banner
    (w,) = seen["workers"]
    assert w["name"] == "node-a" and [c["job"] for c in w["cores"] if c["busy"]] == ["long_sim"]
    assert not page.errors, page.errors
    page.close()
    r = h.cli("status", "--http", again.http)
    assert r.returncode == 0 and "recovering: 1 running jobs waiting for their client" in \
        r.stdout, r.stdout + r.stderr
    assert st["workers"][0]["core_map"]["0"]["job"] == "long_sim"


SWEEP_PROGRAM = '''
import os
import sys
import time

import trio

import grain
from grain import Cores

address, token_file, stop = sys.argv[1:4]


def {fn}(i, seconds):
    time.sleep(seconds)
    if {fail_every} and i % {fail_every} == {fail_every} - 1:
        raise FloatingPointError(f"diverged at step {{i}}: loss is nan")
    return i


async def one(i):
    try:
        await grain.exec1(Cores({cores}), {fn}, i, {seconds})
    except FloatingPointError:
        pass


async def main():
    i = 0
    async with trio.open_nursery() as n:
        while not os.path.exists(stop):
            for _ in range({batch}):
                n.start_soon(one, i)
                i += 1
            await trio.sleep({pause})


if __name__ == "__main__":
    grain.run_combine(main, address=address, token=open(token_file).read().strip())
'''


@pytest.mark.skipif(not os.environ.get("GRAIN_DOCS_SCREENSHOT"),
                    reason="makes docs/dashboard.png (GRAIN_DOCS_SCREENSHOT=1); takes ~90 s")
@pytest.mark.timeout(300)
def test_docs_screenshot_of_a_busy_cluster(grain_procs: Harness, chromium: Chromium) -> None:
    """Three users' sweeps on two workers for a minute and a half, then a screenshot of
    the page for docs/dashboard.md."""
    import time
    h = grain_procs
    tokens = {"alice": "alice-token-0123456789", "bob": "bob-token-9876543210",
              "carol": "carol-token-5555555555"}
    (h.tmp / "clients").write_text(
        "".join(f"{u} {t}{' weight=2' if u == 'alice' else ''}\n" for u, t in tokens.items()))
    worker_token = h.tmp / "worker.token"
    worker_token.write_text("worker-secret-abcdef\n")
    ex = h.executor(extra=["--client-tokens", str(h.tmp / "clients"),
                           "--worker-token-file", str(worker_token)], name="lab")
    h.worker("node-a", ex, cores="0,1", memory="8GB", token_file=worker_token)
    h.worker("node-b", ex, cores="0,1", memory="8GB", token_file=worker_token)
    stop = h.tmp / "stop"
    for user, fn, cores, seconds, batch, pause, fail_every in (
            ("alice", "render_frame", 1, 0.4, 6, 0.5, 0),
            ("bob", "train_model", 2, 3.0, 1, 3.0, 0),
            ("carol", "simulate", 1, 0.9, 2, 1.0, 9)):
        d = h.tmp / user
        d.mkdir()
        (d / "main.py").write_text(SWEEP_PROGRAM.format(
            fn=fn, cores=cores, seconds=seconds, batch=batch, pause=pause,
            fail_every=fail_every))
        tf = h.tmp / f"{user}.token"
        tf.write_text(tokens[user] + "\n")
        h.python(d / "main.py", ex.address, str(tf), str(stop), log=user)
    page = chromium.page()
    page.navigate(ex.http + "/")
    time.sleep(90)   # not synchronisation: the charts need a minute and a half of history
    page.wait_for(READ_PAGE, lambda p: p["failures"] and p["queue"], 30, "a busy page")
    page.screenshot(DOCS / "dashboard.png")
    stop.write_text("")
    page.close()

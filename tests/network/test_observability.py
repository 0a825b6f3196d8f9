"""What operators see: /healthz, /status, /metrics and `grain status`; and the original
grain's passive worker form (the executor dials `grain worker --listen`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import netjobs
import pytest
import trio
from grain_harness import (
    TOKEN,
    ExecutorProc,
    Harness,
    each_once,
    free_port,
    process_env,
    run_client,
    wait_until,
)

import grain
from grain.cli.status import fetch_over_grain
from grain.resource import Cores

pytestmark = pytest.mark.timeout(90)

STATUS_FIELDS = {"version", "uptime_s", "queue_length", "clients", "running_jobs", "cores",
                 "memory_gb", "workers"}
WORKER_FIELDS = {"name", "address", "cores_total", "cores_free", "memory_total_gb",
                 "memory_free_gb", "running_jobs", "cpuset", "exclusive_cpuset", "gpus"}
COUNTERS = ("grain_jobs_submitted_total", "grain_jobs_started_total",
            "grain_jobs_finished_total", "grain_jobs_failed_total")
GAUGES = ("grain_queue_length", "grain_cores_in_use")


def boom() -> None:
    raise ValueError("boom")


def test_http_status_metrics_and_health_follow_the_jobs(grain_procs: Harness,
                                                        tmp_path: Path) -> None:
    ex = grain_procs.executor()
    assert ex.get("/healthz") == "ok\n"
    grain_procs.worker("wa", ex, cores="0")
    grain_procs.worker("wb", ex, cores="1")
    st = ex.status()
    assert STATUS_FIELDS <= set(st), set(st)
    assert st["cores"] == {"total": 2, "free": 2} and st["clients"] == 0
    assert st["memory_gb"]["total"] == pytest.approx(4.0)
    for w in st["workers"]:
        assert WORKER_FIELDS <= set(w), set(w)
        assert w["address"].startswith("127.0.0.1:")
        assert w["cpuset"] == ([0] if w["name"] == "wa" else [1])
        assert isinstance(w["exclusive_cpuset"], bool) and w["gpus"] == []
    m0 = ex.metrics()
    for name in (*COUNTERS, *GAUGES):
        assert name in m0, sorted(m0)
    assert any(k.startswith("grain_placement_seconds") for k in m0)
    marks = str(tmp_path / "marks")
    seen: dict = {}

    async def main() -> dict:
        async with trio.open_nursery() as n:
            n.start_soon(each_once, {i: (Cores(1), netjobs.mark_and_sleep,
                                         (marks, f"s{i}", 1.5)) for i in range(3)})
            with trio.fail_after(10):
                while len(netjobs.markers(marks)) < 2:
                    await trio.sleep(0.05)
            seen["status"] = ex.status()
            seen["metrics"] = ex.metrics()
        out = await each_once({i: (Cores(1), netjobs.noop, (i,)) for i in range(20)})
        assert all(v == ("ok", k) for k, v in out.items())
        bad = await each_once({0: (Cores(1), boom, ())})
        assert bad[0][0] == "err" and isinstance(bad[0][1], ValueError)
        return out

    run_client(ex, main, limit=30)
    busy, bm = seen["status"], seen["metrics"]
    assert busy["running_jobs"] == 2 and busy["queue_length"] == 1 and busy["clients"] == 1
    assert busy["cores"] == {"total": 2, "free": 0}
    assert sorted(w["running_jobs"] for w in busy["workers"]) == [1, 1]
    assert bm["grain_cores_in_use"] == 2 and bm["grain_queue_length"] == 1
    st = ex.wait_idle()
    m1 = ex.metrics()
    assert m1["grain_jobs_submitted_total"] - m0["grain_jobs_submitted_total"] == 24
    assert m1["grain_jobs_started_total"] - m0["grain_jobs_started_total"] == 24
    assert m1["grain_jobs_finished_total"] - m0["grain_jobs_finished_total"] == 23
    assert m1["grain_jobs_failed_total"] - m0["grain_jobs_failed_total"] == 1
    assert m1["grain_cores_in_use"] == 0 and m1["grain_queue_length"] == 0
    assert st["jobs"]["submitted"] == 24 and st["uptime_s"] > 0
    # the event-loop watch runs in grain executor: 24 jobs' handling is busy time, and
    # some stretch between two socket polls was the longest
    busy = m1["grain_event_loop_busy_seconds_total"] - m0["grain_event_loop_busy_seconds_total"]
    assert 0 < busy < st["uptime_s"]
    assert 0 < m1["grain_event_loop_longest_stall_seconds"] < 5
    with pytest.raises(urllib.error.HTTPError) as e:
        ex.get("/nope")
    assert e.value.code == 404
    req = urllib.request.Request(ex.http + "/status", method="POST", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=3)  # noqa: S310
    assert e.value.code == 405


def test_grain_status_table_json_and_http(grain_procs: Harness) -> None:
    ex = grain_procs.executor()
    grain_procs.worker("node-a", ex, cores="0")
    grain_procs.worker("node-b", ex, cores="1")
    tf = str(grain_procs.token_file)
    r = grain_procs.cli("status", "--executor", ex.address, "--token-file", tf)
    assert r.returncode == 0, r.stderr
    assert "workers 2, cores free 2/2" in r.stdout
    for name in ("node-a", "node-b"):
        assert name in r.stdout
    assert "┃ name" in r.stdout or "name" in r.stdout.splitlines()[2]
    r = grain_procs.cli("status", "--executor", ex.address, "--token-file", tf, "--json")
    doc = json.loads(r.stdout)
    assert STATUS_FIELDS <= set(doc) and {w["name"] for w in doc["workers"]} == {"node-a",
                                                                                 "node-b"}
    r = grain_procs.cli("status", "--http", ex.http, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["cores"]["total"] == 2
    # GRAIN_TOKEN works in place of --token-file
    r = grain_procs.cli("status", "--executor", ex.address, env={"GRAIN_TOKEN": TOKEN})
    assert r.returncode == 0 and "node-a" in r.stdout, r.stderr


def test_grain_status_says_clearly_when_it_cannot(grain_procs: Harness) -> None:
    tf = str(grain_procs.token_file)
    port = free_port()
    r = grain_procs.cli("status", "--executor", f"grain://127.0.0.1:{port}", "--token-file", tf)
    assert r.returncode == 1
    assert r.stderr.startswith(f"error: cannot get the status of grain://127.0.0.1:{port}")
    assert "is `grain executor` running" in r.stderr and "Traceback" not in r.stderr
    r = grain_procs.cli("status", "--http", f"http://127.0.0.1:{port}")
    assert r.returncode == 1 and "Connection refused" in r.stderr, r.stderr
    ex = grain_procs.executor()
    bad = grain_procs.tmp / "bad"
    bad.write_text("wrong\n")
    r = grain_procs.cli("status", "--executor", ex.address, "--token-file", str(bad))
    assert r.returncode == 1 and "wrong or missing token" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    ex.kill(signal.SIGSTOP)
    try:
        with pytest.raises(TimeoutError, match="no status from"):
            trio.run(fetch_over_grain, ex.address, TOKEN, None, 1.0)
    finally:
        ex.kill(signal.SIGCONT)


def _passive_run(grain_procs: Harness, settle: float) -> list:
    port = free_port()
    grain_procs.passive_worker("passive", f"grain://127.0.0.1:{port}", cores="1")
    wait_until(lambda: _listening(port), 15, "the passive worker to listen")

    async def main() -> list:
        await trio.sleep(settle)
        async with grain.open_waitgroup() as wg:
            for i in range(6):
                wg.submit(Cores(1), netjobs.where, i)
        return wg.results

    async def bounded() -> list:
        with trio.fail_after(30):
            return await main()
    return grain.run_combine(bounded, [f"grain://127.0.0.1:{port}"], token=TOKEN,
                             nolocal=True)


def test_passive_worker_dialled_by_the_embedded_executor(grain_procs: Harness) -> None:
    """The original grain's form: `grain worker --listen`, and run_combine given the
    worker's address; the embedded executor dials it and the jobs run there, pinned.
    (The program waits a moment first: see the next test for why.)"""
    results = _passive_run(grain_procs, settle=1.0)
    assert [r[0] for r in results] == list(range(6))
    assert {(r[1], tuple(r[2])) for r in results} == {("passive", (1,))}


def test_passive_worker_jobs_submitted_at_once_wait_for_it(grain_procs: Harness) -> None:
    results = _passive_run(grain_procs, settle=0.0)
    assert {r[1] for r in results} == {"passive"}


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- the web view's data: core maps, queues, history, failures; metrics per user ----------

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
    while not os.path.exists(stop):
        time.sleep(0.02)
    return int(np.int64(i))


def explode(frame):
    raise ValueError(f"bad frame {{frame}}")


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


def _two_users(h: Harness) -> tuple[dict[str, Path], Path]:
    """Tokens by role: users alice and bob, and the workers' secret."""
    tokens = {"alice": "alice-token-0123456789", "bob": "bob-token-9876543210"}
    (h.tmp / "clients").write_text("".join(f"{u} {t}\n" for u, t in tokens.items()))
    files = {}
    for user, tok in tokens.items():
        files[user] = h.tmp / f"{user}.token"
        files[user].write_text(tok + "\n")
    worker = h.tmp / "worker.token"
    worker.write_text("worker-secret-abcdef\n")
    return files, worker


def _start_user(h: Harness, ex: ExecutorProc, token: Path, user: str, fn: str, jobs: int,
                fail: bool) -> tuple[subprocess.Popen, Path]:
    """``python main.py`` of ``user``: ``jobs`` jobs of ``fn`` (in ``__main__``) that run
    until the returned stop file exists, after one failing job when ``fail``."""
    d = h.tmp / user
    d.mkdir()
    (d / "main.py").write_text(USER_PROGRAM.format(fn=fn))
    stop = h.tmp / f"stop-{user}"
    proc = h.python(d / "main.py", ex.address, str(token), str(stop), str(jobs),
                    "1" if fail else "0", log=user)
    return proc, stop


def _user(st: dict, name: str) -> dict:
    return next((u for u in st["users"] if u["name"] == name), {})


def test_status_shows_core_maps_queues_history_failures_and_user_metrics(
        grain_procs: Harness) -> None:
    h = grain_procs
    tokens, worker_token = _two_users(h)
    ex = h.executor(extra=["--client-tokens", str(h.tmp / "clients"),
                           "--worker-token-file", str(worker_token)])
    h.worker("wa", ex, cores="0", token_file=worker_token)
    h.worker("wb", ex, cores="1", token_file=worker_token)
    bob, bob_stop = _start_user(h, ex, tokens["bob"], "bob", "fit_model", 1, fail=False)
    ex.wait_status(lambda st: _user(st, "bob").get("running_jobs") == 1, 30, "bob's job")
    alice, alice_stop = _start_user(h, ex, tokens["alice"], "alice", "simulate", 3, fail=True)
    st = ex.wait_status(lambda st: _user(st, "alice").get("queued_jobs") == 2
                        and _user(st, "alice").get("running_jobs") == 1, 30,
                        "alice's first job to run and two to queue")

    # each core says which job (by function), of which user and client, for how long
    maps = {w["name"]: w["core_map"] for w in st["workers"]}
    assert {w["name"]: w["core_ids"] for w in st["workers"]} == {"wa": [0], "wb": [1]}
    held = {(e["job"], e["user"]) for m in maps.values() for e in m.values()}
    assert held == {("simulate", "alice"), ("fit_model", "bob")}
    by_user = {e["user"]: e for m in maps.values() for e in m.values()}
    assert by_user["bob"]["session"].endswith(f":{bob.pid}")
    assert by_user["alice"]["session"].endswith(f":{alice.pid}")
    assert by_user["bob"]["queued_behind"] == 0 and by_user["bob"]["running_s"] >= 0
    first = by_user["bob"]["running_s"]
    ex.wait_status(lambda s: any(e["user"] == "bob" and e["running_s"] > first
                                 for w in s["workers"] for e in w["core_map"].values()),
                   10, "bob's job's running time to grow")
    # the queue per user, by request shape, with the function of the next job in line
    (q,) = _user(st, "alice")["queue"]
    assert (q["request"], q["queued"], q["next"]) == ("Cores(1)", 2, "simulate")
    assert q["waiting_s"] >= 0 and _user(st, "bob")["queue"] == []
    assert _user(st, "alice")["share"] == 0.5 and _user(st, "alice")["sessions"] == 1
    # the failure, with its error; the history counted it
    (f,) = st["failures"]
    assert (f["job"], f["user"], f["end"]) == ("explode", "alice", "raised")
    assert f["error"] == "ValueError: bad frame 7" and f["worker"] in ("wa", "wb")
    assert f["ran_s"] is not None and f["ran_s"] >= 0 and f["attempts"] == 1
    hist = st["history"]
    assert len(hist["finished"]) == len(hist["cores_busy"]) == 600
    assert sum(hist["failed"]) == 1 and sum(hist["started"]) == 3
    assert hist["cores_busy"][-1] == 2 and hist["cores_total"][-1] == 2
    assert hist["queued"][-1] == 2 and abs(hist["end"] - st["time"]) <= 2
    assert _user(st, "alice")["failed_jobs"] == 1
    # per-user gauges
    m = ex.metrics()
    assert m['grain_user_running_jobs{user="alice"}'] == 1
    assert m['grain_user_queued_jobs{user="alice"}'] == 2
    assert m['grain_user_cores_in_use{user="bob"}'] == 1
    assert m['grain_user_queued_jobs{user="bob"}'] == 0
    assert m['grain_user_share{user="alice"}'] == 0.5

    bob_stop.write_text("")
    alice_stop.write_text("")
    assert bob.wait(60) == 0 and alice.wait(60) == 0
    st = ex.wait_idle()
    assert sum(st["history"]["finished"]) == 4 and sum(st["history"]["failed"]) == 1
    assert all(w["core_map"] == {} for w in st["workers"])
    m = ex.metrics()
    assert m['grain_user_running_jobs{user="alice"}'] == 0
    assert m['grain_user_cores_in_use{user="bob"}'] == 0


# -- HTTP hardening --------------------------------------------------------------------------

def _raw(ex: ExecutorProc, request: bytes, limit: float = 10.0) -> bytes:
    """Send raw bytes to the HTTP port; everything the executor answers until it closes."""
    with socket.create_connection(("127.0.0.1", ex.http_port), timeout=limit) as s:
        s.sendall(request)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def _parse(resp: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_http_serves_the_page_files_with_their_types_and_nothing_else(
        grain_procs: Harness) -> None:
    import importlib.resources
    ex = grain_procs.executor()
    web = importlib.resources.files("grain.executor").joinpath("web")
    for path, fname, ctype in (("/", "index.html", "text/html; charset=utf-8"),
                               ("/static/app.js", "app.js", "text/javascript; charset=utf-8"),
                               ("/static/chart.js", "chart.js",
                                "text/javascript; charset=utf-8"),
                               ("/static/style.css", "style.css", "text/css; charset=utf-8"),
                               ("/favicon.svg", "favicon.svg", "image/svg+xml")):
        code, headers, body = _parse(_raw(ex, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()))
        assert code == 200 and headers["content-type"] == ctype, (path, headers)
        assert body == web.joinpath(fname).read_bytes()
        assert headers["x-content-type-options"] == "nosniff"
    code, headers, _ = _parse(_raw(ex, b"GET / HTTP/1.1\r\n\r\n"))
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    for path, ctype in (("/status", "application/json"), ("/healthz", "text/plain"),
                        ("/metrics", "text/plain; version=0.0.4")):
        code, headers, _ = _parse(_raw(ex, f"GET {path} HTTP/1.0\r\n\r\n".encode()))
        assert code == 200 and headers["content-type"].startswith(ctype), (path, headers)
    # HEAD: the same head, no body
    code, headers, body = _parse(_raw(ex, b"HEAD / HTTP/1.1\r\n\r\n"))
    assert code == 200 and body == b""
    assert int(headers["content-length"]) == len(web.joinpath("index.html").read_bytes())
    # no way out of the fixed set of files
    for path in ("/static/../status", "/static/../../../../etc/passwd",
                 "/static/%2e%2e/%2e%2e/etc/passwd", "/static//app.js", "/static/app.js/..",
                 "/web/index.html", "/grain/executor/http.py", "/static/", "/static/http.py",
                 "/..%2f..%2fetc%2fpasswd", "/index.html/../../etc/passwd"):
        code, headers, body = _parse(_raw(ex, f"GET {path} HTTP/1.1\r\n\r\n".encode()))
        assert code == 404, path
        assert b"root:" not in body and b"import" not in body
    # other methods, malformed and oversized requests
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH"):
        code, headers, _ = _parse(_raw(ex, f"{method} /status HTTP/1.1\r\n\r\n".encode()))
        assert code == 405 and headers["allow"] == "GET, HEAD", method
    for bad in (b"GARBAGE\r\n\r\n", b"GET nohost HTTP/1.1\r\n\r\n", b"GET / FTP/1\r\n\r\n",
                b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\r\n\r\n"):
        assert _parse(_raw(ex, bad))[0] == 400, bad
    big = b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 20000 + b"\r\n\r\n"
    assert _parse(_raw(ex, big))[0] == 431
    # a peer that says nothing is hung up on (bounded time), and costs nothing after
    with socket.create_connection(("127.0.0.1", ex.http_port), timeout=20) as s:
        assert s.recv(10) == b""
    assert ex.get("/healthz") == "ok\n"


def _open_stream(ex: ExecutorProc) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", ex.http_port), timeout=10)
    s.sendall(b"GET /events HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n")
    return s


def _read_event(s: socket.socket, buf: bytearray) -> bytes:
    while b"\n\n" not in buf[buf.find(b"event:"):] or b"event:" not in buf:
        chunk = s.recv(65536)
        assert chunk, "the stream ended"
        buf += chunk
    start = buf.find(b"event:")
    end = buf.find(b"\n\n", start)
    event = bytes(buf[start:end])
    del buf[:end + 2]
    return event


def test_events_stream_the_status_and_are_capped(grain_procs: Harness) -> None:
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex, cores="0")
    s = _open_stream(ex)
    buf = bytearray()
    try:
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        assert b"Content-Type: text/event-stream" in head and b"no-store" in head
        buf = bytearray(rest)
        seen = []
        for _ in range(2):   # the document, again a moment later (uptime has grown)
            event = _read_event(s, buf)
            name, data = event.split(b"\n", 1)
            assert name == b"event: status" and data.startswith(b"data: ")
            doc = json.loads(data[len(b"data: "):])
            assert STATUS_FIELDS <= set(doc) and [w["name"] for w in doc["workers"]] == ["wa"]
            seen.append(doc["uptime_s"])
        assert seen[1] > seen[0]
        # at most 16 streams at once: the 17th is refused, and may come back later
        more = [_open_stream(ex) for _ in range(15)]
        try:
            for m in more:   # each one is being served (its head arrived)
                assert m.recv(64).startswith(b"HTTP/1.1 200")
            code, headers, body = _parse(_raw(ex, b"GET /events HTTP/1.1\r\n\r\n"))
            assert code == 503 and b"poll /status" in body and headers["retry-after"] == "5"
        finally:
            for m in more:
                m.close()
        wait_until(lambda: _parse(_raw(ex, b"HEAD /events HTTP/1.1\r\n\r\n"))[0] == 200, 10,
                   "a stream slot to free up")
    finally:
        s.close()


# -- the docs say what the code does ----------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _doc_table_names(text: str, heading: str) -> list[str]:
    """The first column's `names` of the table under ``heading``."""
    section = text.split(heading, 1)[1]
    names = []
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("| `"):
            names.append(line.split("`")[1])
    return names


def test_the_metrics_table_in_the_docs_is_the_codes() -> None:
    from prometheus_client import generate_latest

    from grain.executor.core import Executor
    from grain.executor.http import HttpServer
    from grain.executor.metrics import METRICS
    documented = _doc_table_names((DOCS / "interfaces.md").read_text(), "### Metrics")
    assert documented == [d.name for d in METRICS]
    ex = Executor()
    ex.placement.set_user("alice")
    text = generate_latest(HttpServer(ex).registry).decode()
    exposed = [ln.split()[0].split("{")[0] for ln in text.splitlines()
               if ln and not ln.startswith("#")]
    assert exposed == documented
    rows = {r.split("`")[1]: r for r in (DOCS / "interfaces.md").read_text().splitlines()
            if r.startswith("| `grain_")}
    for d in METRICS:
        assert f"| {d.kind} |" in rows[d.name], d.name
        assert ("`user`" in rows[d.name]) == bool(d.labels), d.name


def test_every_status_field_is_documented(grain_procs: Harness) -> None:
    """The fields of a real status document (with a job running, one queued, one failed)
    all appear in docs/interfaces.md."""
    ex = grain_procs.executor()
    grain_procs.worker("wa", ex, cores="0")
    marks = str(grain_procs.tmp / "marks")

    async def main() -> None:
        await each_once({0: (Cores(1), boom, ())})
        async with trio.open_nursery() as n:
            n.start_soon(each_once, {i: (Cores(1), netjobs.mark_and_sleep,
                                         (marks, f"s{i}", 1.0)) for i in range(2)})
            with trio.fail_after(10):
                while not netjobs.markers(marks):
                    await trio.sleep(0.05)
            seen["status"] = ex.status()

    seen: dict = {}
    run_client(ex, main)
    st = seen["status"]
    docs = (DOCS / "interfaces.md").read_text()
    section = docs.split("### The status document", 1)[1].split("## Kubernetes", 1)[0]
    fields = set(st) | set(st["history"]) | set(st["jobs"]) | set(st["failures"][0])
    fields |= set(st["workers"][0]) | set(next(iter(st["workers"][0]["core_map"].values())))
    fields |= set(st["users"][0]) | set(st["users"][0]["queue"][0])
    missing = sorted(f for f in fields if f"`{f}`" not in section and f"`{f}[]`" not in section)
    assert not missing, f"undocumented /status fields: {missing}"


# -- grain status --watch ------------------------------------------------------------------

class Pty:
    """A command on a pseudo-terminal (so rich draws live), its output collected."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        import fcntl
        import pty
        import struct
        import termios
        import threading
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 200, 0, 0))
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                     env={**env, "TERM": "xterm-256color"}, cwd=cwd)
        os.close(slave)
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.chunks.append(data)

    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.reader.join(5)
        os.close(self.master)
        return self.proc.returncode


def test_grain_status_watch_redraws_workers_jobs_and_users(grain_procs: Harness) -> None:
    import sys
    ex = grain_procs.executor()
    grain_procs.worker("node-a", ex, cores="0")
    term = Pty([sys.executable, "-m", "grain.cli", "status", "--executor", ex.address,
                "--token-file", str(grain_procs.token_file), "--watch", "--interval", "0.2"],
               process_env(), grain_procs.tmp)
    try:
        wait_until(lambda: "node-a" in term.text() and "Ctrl-C to stop" in term.text(), 20,
                   "the first frame")
        assert "mark_and_sleep" not in term.text() and "users" not in term.text()
        marks = grain_procs.tmp / "marks"
        client = grain_procs.python(Path(netjobs.__file__).with_name("client_prog.py"),
                                    ex.address, str(grain_procs.token_file), str(marks),
                                    "t", "1", "30")
        st = ex.wait_status(lambda s: s["running_jobs"] == 1, 30, "the client's job to run")
        user = st["users"][0]["name"]
        # the same program, redrawn: now with the job on its worker and its user's row
        wait_until(lambda: f"mark_and_sleep ({user})" in term.text(), 20,
                   "the job in the workers table")
        assert "users" in term.text() and "running 1, queued 0" in term.text()
        client.kill()
    finally:
        code = term.stop()
    assert code == 0, term.text()[-3000:]
    assert "Traceback" not in term.text()

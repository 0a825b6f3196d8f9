"""Fuzzing at the message layer: well-framed, authenticated, arbitrary messages.

``test_fuzz.py`` hammers the frame decoder and the handshake; here the peers get past
both and then say anything the declarations allow (and more):

- at a live ``grain executor`` process, sessions of a client and a worker at once: every
  message of their hops with arbitrary field values (ids that name real jobs, functions
  and sessions; resources that are negative, fractional, NaN or absurd), out of order,
  repeated; ``Attach``, ``Done`` and ``JobOutput`` for jobs the executor did or did not
  give the fake worker; then, now and then, a message of another hop, a raw array that
  breaks the declarations, or bytes that are not a frame. After every session the
  executor must be alive and run a well-behaved client's job;
- at a real ``grain worker`` dialling a fake executor: every executor-to-worker message
  with arbitrary fields (``Run`` on cores it has and has not, bundles that are not zips,
  kills and releases of anything), then garbage; after each, the worker must still run
  a job it is given properly;
- at a real ``grain worker`` from its runners: jobs that write arbitrary runner messages
  (and garbage) into their runner's socket; after each, the worker is the same process
  and runs another program's job.

Hypothesis draws each session's shape and a seed; ``wire_fuzz.Gen`` draws the messages
from the seed (fast enough for the 100,000 inputs asked for, in a few minutes on two
cores). The last test checks the count.
"""

from __future__ import annotations

import os
import pickle
import random
import sys
import time
from typing import Any

import netjobs
import pytest
import trio
import wire_fuzz
from grain_harness import TOKEN, Harness, free_port
from hostile_peers import RawPeer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from wire_fuzz import Gen, encode_frame, hop_classes

from grain.protocol import handshake
from grain.protocol import messages as m
from grain.protocol import payload as pl
from grain.protocol.frames import PREFIX

pytestmark = pytest.mark.timeout(600)

EXAMPLES = {"executor": 550, "worker": 150, "runner": 40}
INPUTS: dict[str, int] = {}
"""Messages (and garbage frames) sent per test: at least 100,000 in all."""


def fuzz(name: str):  # type: ignore[no-untyped-def]
    # FUZZ_SCALE=0.1 for a quick look while working on it (the count check then skips)
    n = max(1, int(EXAMPLES[name] * float(os.environ.get("FUZZ_SCALE", "1"))))
    # no shrinking: a session's messages come from one seed (nothing to shrink), and
    # every shrinking step would replay sessions against the live processes
    return settings(max_examples=n, deadline=None, database=None,
                    phases=(Phase.explicit, Phase.generate),
                    suppress_health_check=list(HealthCheck))


def _count(name: str, n: int) -> None:
    INPUTS[name] = INPUTS.get(name, 0) + n


GOOD_REQUEST = [["Cores", {"N": 1}], ["Memory", {"m": 1.5, "M": 1.5}]]
"""Only the real worker (2 GB) fits it: fake workers register less memory."""

ENDINGS = ["", "", "", "raw", "other hop", "bytes", "truncated", "huge prefix"]

plans = st.fixed_dictionaries({
    "client": st.booleans(), "worker": st.booleans(), "resume": st.booleans(),
    "frames": st.integers(1, 8), "per_frame": st.sampled_from([1, 5, 50, 200, 400]),
    "ending": st.sampled_from(ENDINGS), "bye": st.booleans(),
    "capacity": st.sampled_from(["small", "memory", "arbitrary"]),
})

CLIENT_WEIGHTS = {m.Submit: 8, m.DefineFunction: 3, m.Cancel: 3, m.Ack: 2, m.ForgetFunction: 1,
                  m.ResumeDone: 1, m.StatusRequest: 1, m.Ping: 1, m.ProjectBundle: 1}
WORKER_WEIGHTS = {m.Done: 6, m.JobOutput: 3, m.Attach: 1, m.Draining: 1, m.StatusRequest: 1,
                  m.Ping: 1}


def _pick(rng: random.Random, weights: dict[type[m.Message], int]) -> type[m.Message]:
    return rng.choices(list(weights), list(weights.values()))[0]


async def _send_last(peer: Any, bad: bytes) -> int:
    """Send a session's last, bad bytes (if any, and the peer still listens): how many
    frames went."""
    if not bad or peer.closed:
        return 0
    try:
        await peer.send_raw(bad)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return 0
    return 1


def _ending(gen: Gen, ending: str, own: Any) -> bytes:
    """What ends a session badly (or nothing)."""
    rng = gen.rng
    if ending == "raw":
        return encode_frame([(gen.raw(), b"")])
    if ending == "other hop":
        others = [c for c in m.all_messages() if c not in hop_classes(own)]
        return encode_frame([gen.message(rng.choice(others))])
    if ending == "bytes":
        return rng.randbytes(rng.randrange(1, 200))
    if ending == "truncated":
        return encode_frame([gen.message(m.Ping)])[:-1]
    if ending == "huge prefix":
        return PREFIX.pack(rng.choice([0, 2 ** 31, 2 ** 32 - 1]), 2 ** 32 - 1)
    return b""


async def _sync(peer: RawPeer | None, limit: float = 15.0) -> None:
    """Until the executor answered a status request sent after everything else (so it
    handled all of it), or dropped the peer (after a bad ending: ``_hang_up``)."""
    if peer is None or peer.closed:
        return
    have = sum(type(h) is m.Status for h, _ in peer.inbox)
    try:
        await peer.send_raw(encode_frame([(m.StatusRequest(), b"")]))
        await peer.until(lambda inbox: sum(type(h) is m.Status for h, _ in inbox) > have,
                         limit)
    except (ConnectionError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _hang_up(peer: RawPeer, limit: float = 5.0) -> None:
    """After a bad ending: send the end of our stream and wait until the executor, which
    must drop a peer that broke the protocol or stopped mid-frame, closes its side. (A
    status request would not do: behind half a frame it is only more of that frame, and
    the executor waits for the rest until the peer's timeout.)"""
    if peer.closed:
        return
    try:
        await peer.stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return
    with trio.fail_after(limit):
        while await peer.pump():
            pass


async def _executor_session(port: int, gen: Gen, plan: dict[str, Any]) -> int:
    """One fuzzing session at the executor; returns how many messages it sent."""
    rng, sent = gen.rng, 0
    client = worker = None
    try:
        if plan["client"]:
            client = await RawPeer.connect(port, "client", {
                "name": "fuzz", "session": rng.choice(gen.sessions),
                "resume": plan["resume"]})
        if plan["worker"]:
            n = rng.choice([1, 2, 4])
            cap: Any = [["Cores", {"c": list(range(n)), "N": n}]]
            if plan["capacity"] == "memory":
                cap.append(["Memory", {"m": 1.0, "M": 1.0}])
            elif plan["capacity"] == "arbitrary":
                cap = gen.resource()
            worker = await RawPeer.connect(port, "worker", {
                "name": rng.choice(["fz1", "fz2"]), "capacity": cap, "pid": 1})
            attach = gen.message(m.Attach)[0] if rng.random() < 0.3 else m.Attach()
            await worker.send_raw(encode_frame([(attach, b"")]))
            sent += 1
    except (ConnectionError, trio.BrokenResourceError, OSError):
        pass   # a registration the executor refused: that was the input
    peers = [(p, hop) for p, hop in ((client, m.ClientToExecutor),
                                      (worker, m.WorkerToExecutor)) if p is not None]
    for _ in range(plan["frames"] if peers else 0):
        peer, hop = rng.choice(peers)
        weights = CLIENT_WEIGHTS if hop is m.ClientToExecutor else WORKER_WEIGHTS
        batch = [gen.message(_pick(rng, weights)) for _ in range(plan["per_frame"])]
        try:
            await peer.send_raw(encode_frame(batch))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            break
        sent += len(batch)
        if worker is not None:   # answer for the jobs it was really given, next time
            await _sync(worker)
            gen.pairs += [(h.sess, h.cid) for h, _ in worker.inbox if type(h) is m.Run]
    for peer, hop in peers:
        bad = _ending(gen, plan["ending"], hop)
        sent += await _send_last(peer, bad)
        if bad:
            await _hang_up(peer)
        else:
            await _sync(peer, 5.0)
        if plan["bye"] and not peer.closed:
            try:
                await peer.send_raw(encode_frame([(m.Bye("fuzzed"), b"")]))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        await peer.aclose()
    return sent


class GoodClient:
    """A well-behaved client, connected for the whole test (its runner stays warm): after
    every fuzzing session, one job of it must run and return its value."""

    def __init__(self, peer: RawPeer) -> None:
        self.peer = peer
        self.k = 0
        self.diagnose: Any = None

    @classmethod
    async def connect(cls, port: int) -> GoodClient:
        peer = await RawPeer.connect(port, "client", {"name": "good"}, user="good")
        await peer.send([(m.DefineFunction(1), pl.dumps(netjobs.noop))])
        return cls(peer)

    async def check(self) -> None:
        self.k += 1
        k, peer = self.k, self.peer
        await peer.send([(m.Submit(k, GOOD_REQUEST, 1), pickle.dumps(((k,), {})))])
        try:
            result = (await peer.results([k], limit=30))[k]
        except trio.TooSlowError:
            raise AssertionError(f"job {k} of a well-behaved client did not end in 30s: "
                                 f"{self.diagnose() if self.diagnose else ''}") from None
        payload = next(p for h, p in peer.inbox if type(h) is m.Result and h.cid == k)
        peer.inbox.clear()
        await peer.send([(m.Ack([k]), b"")])
        assert result.end == m.End.OK and pickle.loads(payload) == k, result


def test_fuzz_messages_at_a_live_executor(grain_procs: Harness) -> None:
    """Whatever authenticated clients and workers say, the executor stays up, logs no
    error of its own, and serves a well-behaved client after every session."""
    ex = grain_procs.executor(extra=["--client-grace", "1", "--worker-grace", "1",
                                     "--wait-for-workers", "2"])
    wa = grain_procs.worker("wa", ex, cores="0,1", memory="2GB")
    sessions = [random.randrange(2 ** 63) for _ in range(3)]
    noop = pl.dumps(netjobs.noop)
    t0 = time.monotonic()

    def diagnose() -> str:
        import subprocess

        import psutil
        st = ex.status()
        kids = [f"{p.pid} {p.status()} {' '.join(p.cmdline()[-3:])}"
                for p in psutil.Process(wa.pid).children()]
        spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
        dump = subprocess.run([spy, "dump", "--pid", str(wa.pid)], capture_output=True,
                              text=True).stdout if os.path.exists(spy) else ""
        return (f"users {st['users']}\nworkers {st['workers']}\nworker children "
                f"{kids}\nworker stacks:\n{dump}\nworker log:\n{wa.tail(30)}")

    async def main() -> int:
        good = await GoodClient.connect(ex.port)
        good.diagnose = diagnose
        await good.check()
        token = trio.lowlevel.current_trio_token()

        def body() -> None:
            @fuzz("executor")
            @given(st.integers(0, 2 ** 32 - 1), plans)
            def session(seed: int, plan: dict[str, Any]) -> None:
                gen = Gen(random.Random(seed), sessions, ["fz1", "fz2", "wa"])
                gen.fn_payloads.append(noop)
                _count("executor", trio.from_thread.run(
                    _executor_session, ex.port, gen, plan, trio_token=token))
                assert ex.alive(), ex.tail(60)
                trio.from_thread.run(good.check, trio_token=token)
            session()
        async with trio.open_nursery() as n:
            n.start_soon(good.peer.keep_alive)
            await trio.to_thread.run_sync(body)
            n.cancel_scope.cancel()
        await good.peer.send([(m.Bye("done"), b"")])
        await good.peer.aclose()
        return good.k

    checks = trio.run(main)
    text = ex.text()
    print(f"executor fuzz: {INPUTS.get('executor', 0)} messages in {checks - 1} sessions, "
          f"{time.monotonic() - t0:.0f}s")
    assert "Traceback" not in text and "internal error" not in text, _errors(text)
    assert ex.alive()


def _errors(text: str) -> str:
    lines = text.splitlines()
    at = [i for i, line in enumerate(lines) if "Traceback" in line or "internal" in line]
    return "\n".join(lines[max(0, at[0] - 5):at[0] + 40]) if at else ""


# -- a worker facing a fake executor ------------------------------------------------------

class FakeExecutor:
    """Accepts a real worker's connections (it dials us), authenticates as an executor,
    and lets the test send it anything."""

    def __init__(self, alive: Any) -> None:
        self.alive = alive
        self.conns: trio.MemoryReceiveChannel[RawPeer]
        self._send, self.conns = trio.open_memory_channel[RawPeer](8)
        self.peer: RawPeer | None = None

    async def serve(self, port: int, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            _, _, _, dec = await handshake.accept(
                stream, lambda role, user: [("worker", TOKEN)], "executor", ("worker",),
                info={"name": "fake"})
        except Exception:  # noqa: BLE001 - not this test's subject
            await trio.aclose_forcefully(stream)
            return
        dec.set_schema(m.WorkerToExecutor)
        await self._send.send(RawPeer(stream, dec, 0, "worker"))
        await trio.sleep_forever()   # the test owns the stream now

    async def current(self) -> RawPeer:
        """The live connection (waiting for the worker to redial if it dropped ours)."""
        deadline = trio.current_time() + 20
        while self.peer is None or self.peer.closed:
            assert self.alive(), "the worker exited"
            assert trio.current_time() < deadline, "the worker did not redial"
            with trio.move_on_after(0.2):
                self.peer = await self.conns.receive()
        return self.peer


RUN_ALLOCS: list[Any] = [[["Cores", {"c": [0], "N": 1}]], [["Cores", {"c": [0], "N": 1}]],
                         [["Cores", {"c": [5], "N": 1}]], [["Cores", {"c": [], "N": 0}]],
                         [["Cores", {"c": [0], "N": 1}], ["GPU", {"g": [3], "G": 1}]],
                         [["Memory", {"m": 0.1, "M": 0.1}]], [], [["Nope", {}]]]

EXECUTOR_WEIGHTS = {m.Run: 6, m.Function: 3, m.Kill: 3, m.Release: 2, m.DropFunction: 1,
                    m.EndSession: 1, m.SessionBundle: 1, m.Status: 1, m.Ping: 1}


async def _worker_session(fake: FakeExecutor, gen: Gen, plan: dict[str, Any]) -> int:
    rng, sent = gen.rng, 0
    peer = await fake.current()
    for _ in range(plan["frames"]):
        batch = []
        for _ in range(plan["per_frame"]):
            msg, payload = gen.message(_pick(rng, EXECUTOR_WEIGHTS))
            if type(msg) is m.Run:
                msg.alloc = rng.choice(RUN_ALLOCS)
                msg.time_limit = rng.choice([None, None, 0.0, 0.2, 5.0])
                msg.memory_limit = rng.choice([None, None, 0, 10 ** 9])
            batch.append((msg, payload))
        try:
            await peer.send_raw(encode_frame(batch))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            break
        sent += len(batch)
        with trio.move_on_after(0.05):
            await peer.pump()
    bad = _ending(gen, plan["ending"], m.ExecutorToWorker)
    if bad and not peer.closed:
        sent += await _send_last(peer, bad)
        # The worker drops the connection (or, behind half a frame, waits for the rest
        # until its timeout): this one is done either way; the worker redials.
        with trio.move_on_after(0.2):
            while await peer.pump():
                pass
        await peer.aclose()
    return sent


async def _worker_runs_a_job(fake: FakeExecutor, k: int) -> Any:
    """Give the worker a proper job; return its value."""
    sess = 10 ** 12          # one session: its warm runner serves every check
    for _ in range(3):   # the connection may be dropped under our feet by the fuzz ending
        peer = await fake.current()
        try:
            await peer.send([(m.Function(sess, 1), pl.dumps(netjobs.noop)),
                             (m.Run(sess, k, 1, [["Cores", {"c": [0], "N": 1}]], "good"),
                              pickle.dumps(((k,), {})))])

            def done(inbox: list) -> Any:
                return next(((h, p) for h, p in inbox
                             if type(h) is m.Done and (h.sess, h.cid) == (sess, k)), None)
            h, p = await peer.until(done, 30)
        except (ConnectionError, trio.BrokenResourceError, trio.ClosedResourceError):
            continue
        await peer.send([(m.Release(sess, [k]), b"")])
        assert h.end == m.End.OK, h
        return pickle.loads(p)
    raise AssertionError("the worker never took a proper job")


def test_fuzz_a_worker_from_a_fake_executor(grain_procs: Harness) -> None:
    """A real worker dials a fake executor that sends it arbitrary messages: it never
    exits, and after each session it runs a proper job."""
    port = free_port()
    w = grain_procs.worker("wf", f"grain://127.0.0.1:{port}", cores="0", wait=False,
                           memory="2GB")
    pid = w.pid
    sessions = [1, 2, 3]

    async def main() -> None:
        fake = FakeExecutor(w.alive)
        async with trio.open_nursery() as n:
            await n.start(fake.serve, port)
            token = trio.lowlevel.current_trio_token()

            def body() -> None:
                checks = [0]

                @fuzz("worker")
                @given(st.integers(0, 2 ** 32 - 1), plans)
                def session(seed: int, plan: dict[str, Any]) -> None:
                    gen = Gen(random.Random(seed), sessions, ["fake"])
                    gen.fn_payloads.append(pl.dumps(netjobs.noop))
                    _count("worker", trio.from_thread.run(
                        _worker_session, fake, gen, plan, trio_token=token))
                    assert w.alive() and w.pid == pid, w.tail(60)
                    checks[0] += 1
                    assert trio.from_thread.run(_worker_runs_a_job, fake, checks[0],
                                                trio_token=token) == checks[0]
                session()
            await trio.to_thread.run_sync(body)
            n.cancel_scope.cancel()

    trio.run(main)
    print(f"worker fuzz (fake executor): {INPUTS.get('worker', 0)} messages")
    assert w.alive() and w.pid == pid
    assert "Traceback" not in w.text(), w.tail(80)


# -- a worker facing its runners -------------------------------------------------------------

RUNNER_WEIGHTS = {m.RunnerDone: 3, m.RunnerOutput: 4}


def _runner_garbage(gen: Gen, plan: dict[str, Any]) -> bytes:
    rng = gen.rng
    frames = [encode_frame([gen.message(_pick(rng, RUNNER_WEIGHTS))
                            for _ in range(rng.randrange(1, 6))])
              for _ in range(plan["frames"])]
    return b"".join(frames) + _ending(gen, plan["ending"], m.RunnerToWorker)


def test_fuzz_a_worker_from_its_runners(grain_procs: Harness) -> None:
    """Jobs write arbitrary runner messages (and garbage) into their runner's socket,
    then return, hang or exit: each ends once, and the worker stays the same process and
    runs the next proper job."""
    ex = grain_procs.executor()
    w = grain_procs.worker("wa", ex, cores="0,1", memory="2GB")
    pid = w.pid
    import grain
    from grain.resource import Cores, WTime

    async def main() -> None:
        token = trio.lowlevel.current_trio_token()
        requests, serve = trio.open_memory_channel[Any](0)

        def body() -> None:
            @fuzz("runner")
            @given(st.integers(0, 2 ** 32 - 1), plans,
                   st.lists(st.sampled_from(["return", "sleep", "exit", "hang"]),
                            min_size=1, max_size=3))
            def session(seed: int, plan: dict[str, Any], modes: list[str]) -> None:
                gen = Gen(random.Random(seed), [], [])
                jobs = [(_runner_garbage(gen, plan), mode) for mode in modes]
                out = trio.from_thread.run(_ask, requests, jobs, trio_token=token)
                _count("runner", sum(plan["frames"] for _ in modes))
                assert w.alive() and w.pid == pid, w.tail(60)
                assert out == "ok", out
            session()

        async def ask_loop() -> None:
            async for jobs, reply in serve:
                try:
                    async with trio.open_nursery() as n:
                        for data, mode in jobs:
                            res = Cores(1) & WTime(2) if mode == "hang" else Cores(1)
                            n.start_soon(_one, res, data, mode)
                    with trio.fail_after(30):
                        value = await grain.exec1(Cores(1), netjobs.noop, 41)
                except Exception as e:  # noqa: BLE001 - reported to the example, which fails
                    # (raising here would leave the example's thread waiting for a reply
                    # for ever: a hang, not a failure)
                    await reply.send(f"failed: {e!r}")
                    continue
                await reply.send("ok" if value == 41 else f"bad value {value!r}")

        async with trio.open_nursery() as n:
            n.start_soon(ask_loop)
            await trio.to_thread.run_sync(body)
            n.cancel_scope.cancel()

    grain.run_combine(main, address=ex.address, token=TOKEN, heartbeat=0.5, timeout=2)
    print(f"worker fuzz (runners): {INPUTS.get('runner', 0)} frames")
    assert w.alive() and w.pid == pid
    assert "Traceback" not in w.text(), w.tail(80)


async def _one(res: Any, data: bytes, mode: str) -> None:
    import grain
    with trio.fail_after(30):     # every job ends, one way or another
        try:
            await grain.exec1(res, wire_fuzz.speak_to_worker, data, mode)
        except Exception:  # noqa: BLE001 - any ending is fine: it ended
            pass


async def _ask(requests: trio.MemorySendChannel[Any], jobs: list[Any]) -> str:
    reply_send, reply_recv = trio.open_memory_channel[str](1)
    await requests.send((jobs, reply_send))
    return await reply_recv.receive()


def test_fuzz_messages_fed_at_least_100k_inputs() -> None:
    """Runs last in this module: the tests above sent over 100,000 inputs."""
    if set(INPUTS) != set(EXAMPLES) or os.environ.get("FUZZ_SCALE", "1") != "1":
        pytest.skip(f"only part of the fuzzing ran ({sorted(INPUTS)})")
    total = sum(INPUTS.values())
    print("message fuzz inputs:", INPUTS, total)
    assert total >= 100_000, INPUTS

"""One cluster, many users: credentials by role, fair share, jobs that cannot touch each
other — between real processes, the users' programs run as scripts.

The executor runs with ``--client-tokens`` (a token per user) and ``--worker-token-file``
(the workers' secret): a client token can never register a worker, the workers' secret can
never submit jobs, a job sees no Grain secret, a runner serves one session only, and a
user who queues thousands of jobs does not hold up another user's one job.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from grain_harness import WORKER_TOKEN, Harness, process_env, user_token, wait_until

pytestmark = pytest.mark.timeout(180)

PROGRAM = '''
import json, os, sys, time
import grain
from grain.resource import Cores

TAG, N, SECONDS, MARKS = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]

def job(i):
    # a marker per start: name = tag, index, start time (monotonic ns, one clock per host)
    open(os.path.join(MARKS, f"{TAG}.{i}.{time.monotonic_ns()}"), "w").close()
    time.sleep(SECONDS)
    return i

async def main():
    async with grain.open_waitgroup() as wg:
        # when this program submits (connected, about to send): the same clock as above
        open(os.path.join(MARKS, f"submitted-{TAG}.{time.monotonic_ns()}"), "w").close()
        for i in range(N):
            wg.submit(Cores(1), job, i)
    return len(wg.results)

print(json.dumps({"done": grain.run_combine(main, address=sys.argv[1],
                                            token=os.environ["USER_TOKEN"])}))
'''


def _program(h: Harness, user: str, tag: str, n: int, seconds: float, marks: Path,
             address: str) -> subprocess.Popen[str]:
    script = h.tmp / f"{tag}.py"
    script.write_text(PROGRAM)
    env = {**process_env(), "USER_TOKEN": user_token(user)}
    return subprocess.Popen([sys.executable, str(script), address, tag, str(n), str(seconds),
                             str(marks)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=h.tmp)


def _starts(marks: Path, tag: str) -> list[int]:
    return sorted(int(p.name.split(".")[2]) for p in marks.iterdir()
                  if p.name.startswith(tag + "."))


def test_bob_is_not_starved_by_alice(grain_procs: Harness, tmp_path: Path) -> None:
    """Alice queues 3,000 jobs of 20 ms on two cores; Bob then submits one job. Bob's job
    starts at the next release of a core: after Bob submitted, at most a job or two of
    Alice's start (those already on their way) before his — first come, first served
    would run Alice's whole queue (~30 s) first. The wait itself is a benchmark figure,
    not asserted here."""
    ex = grain_procs.executor(users={"alice": "", "bob": ""})
    grain_procs.worker("wa", ex, cores="0", token_file=grain_procs.worker_token_file)
    grain_procs.worker("wb", ex, cores="1", token_file=grain_procs.worker_token_file)
    marks = tmp_path / "marks"
    marks.mkdir()
    alice = _program(grain_procs, "alice", "alice", 3000, 0.02, marks, ex.address)
    try:
        wait_until(lambda: len(_starts(marks, "alice")) >= 50, 60, "Alice's sweep to run")
        bob = _program(grain_procs, "bob", "bob", 1, 0.0, marks, ex.address)
        out, _ = bob.communicate(timeout=60)
        assert bob.returncode == 0 and json.loads(out.splitlines()[-1]) == {"done": 1}, out
        [submitted] = [int(p.name.split(".")[1]) for p in marks.iterdir()
                       if p.name.startswith("submitted-bob.")]
        [started] = _starts(marks, "bob")
        overtaking = [t for t in _starts(marks, "alice") if submitted <= t <= started]
        assert len(overtaking) <= 4, \
            f"{len(overtaking)} of Alice's jobs started after Bob submitted, before his"
        st = ex.status()
        users = {u["name"]: u for u in st["users"]}
        assert users["alice"]["queued_jobs"] > 1000, "Alice's queue had to be long still"
        print(f"Bob waited {(started - submitted) / 1e6:.1f} ms; "
              f"{len(overtaking)} of Alice's jobs started meanwhile")
    finally:
        alice.kill()
        alice.communicate(timeout=30)


def test_credentials_by_role(grain_procs: Harness) -> None:
    """A client token cannot register a worker, the workers' secret cannot submit jobs,
    an unknown token is refused, and each user is accounted under their own name."""
    ex = grain_procs.executor(users={"alice": "weight=2", "bob": "max-queued=5"})
    alice_token = grain_procs.tmp / "alice-token"
    alice_token.write_text(user_token("alice"))
    intruder = grain_procs.worker("intruder", ex, token_file=alice_token, wait=False)
    assert intruder.popen.wait(20) != 0
    assert "wrong or missing token for a worker" in intruder.text(), intruder.text()
    grain_procs.worker("wa", ex, cores="0", token_file=grain_procs.worker_token_file)
    client = '''
import os, sys, grain
from grain.resource import Cores
def f(): return "ran"
async def main(): return await grain.exec1(Cores(1), f)
try:
    print(grain.run_combine(main, address=sys.argv[1], token=os.environ["T"]))
except Exception as e:
    print(type(e).__name__, e)
'''
    script = grain_procs.tmp / "client.py"
    script.write_text(client)
    outs = {}
    for who, token in (("worker secret", WORKER_TOKEN), ("alice", user_token("alice")),
                       ("nobody", "s3cret-token-of-nobody-0123456789")):
        r = subprocess.run([sys.executable, str(script), ex.address], capture_output=True,
                           text=True, timeout=60, env={**process_env(), "T": token})
        outs[who] = r.stdout.strip()
    assert outs["alice"] == "ran", outs
    assert outs["worker secret"].startswith("AuthenticationError") and \
        "wrong or missing token for a client" in outs["worker secret"], outs
    assert outs["nobody"].startswith("AuthenticationError"), outs
    st = ex.wait_idle()
    assert [w["name"] for w in st["workers"]] == ["wa"]
    assert st["jobs"]["submitted"] == 1


def test_jobs_see_no_secret_and_runners_serve_one_session(grain_procs: Harness) -> None:
    """A job's environment holds no Grain secret or setting, and a runner is never handed
    to another session: Alice's job poisons its runner (a module global, an environment
    variable, a patched function); Bob's jobs on the same worker, right after, run in other
    processes and see none of it."""
    ex = grain_procs.executor(users={"alice": "", "bob": ""})
    grain_procs.worker("wa", ex, cores="0", token_file=grain_procs.worker_token_file,
                       extra=["--log-level", "debug"])
    program = '''
import json, os, sys, grain
from grain.resource import Cores

def poison():
    import json as j
    j.dumps = lambda *a, **k: "tampered"
    os.environ["POISON"] = "alice was here"
    return os.getpid()

def look():
    import json as j
    secrets = sorted(k for k in os.environ if k.startswith("GRAIN_") and k != "GRAIN_CPUS")
    return os.getpid(), j.dumps([1]), os.environ.get("POISON"), secrets

async def main():
    fn = poison if sys.argv[2] == "alice" else look
    async with grain.open_waitgroup() as wg:
        for _ in range(int(sys.argv[3])):
            wg.submit(Cores(1), fn)
    return wg.results

print(json.dumps(grain.run_combine(main, address=sys.argv[1], token=os.environ["T"])))
'''
    script = grain_procs.tmp / "users.py"
    script.write_text(program)

    def run(user: str, n: int) -> object:
        r = subprocess.run([sys.executable, str(script), ex.address, user, str(n)],
                           capture_output=True, text=True, timeout=60,
                           env={**process_env(), "T": user_token(user),
                                "GRAIN_WORKER_TOKEN": "leaked?"})
        assert r.returncode == 0, r.stdout + r.stderr
        return json.loads(r.stdout.splitlines()[-1])

    alice_pids = set(run("alice", 4))
    bob = run("bob", 4)
    assert all(dumped == "[1]" and poison is None and secrets == []
               for _, dumped, poison, secrets in bob), bob
    assert not alice_pids & {pid for pid, *_ in bob}, "a runner served two sessions"


def test_tokens_file_is_reread_on_sighup(grain_procs: Harness) -> None:
    """Adding a user to the tokens file and sending SIGHUP lets them in; removing one
    shuts them out (the executor logs the reload); a broken file keeps the old tokens."""
    ex = grain_procs.executor(users={"alice": ""})
    grain_procs.worker("wa", ex, cores="0", token_file=grain_procs.worker_token_file)
    script = grain_procs.tmp / "who.py"
    script.write_text('''
import os, sys, grain
from grain.resource import Cores
def f(): return 1
async def main(): return await grain.exec1(Cores(1), f)
try:
    print(grain.run_combine(main, address=sys.argv[1], token=os.environ["T"]))
except Exception as e:
    print(type(e).__name__)
''')

    def attempt(user: str) -> str:
        r = subprocess.run([sys.executable, str(script), ex.address], capture_output=True,
                           text=True, timeout=60, env={**process_env(), "T": user_token(user)})
        return r.stdout.strip()

    assert attempt("carol") == "AuthenticationError"
    grain_procs.client_tokens({"alice": "", "carol": ""})
    ex.kill(signal.SIGHUP)
    wait_until(lambda: "client tokens re-read: 2 users" in ex.text(), 15, "the reload")
    assert attempt("carol") == "1"
    grain_procs.client_tokens({"carol": ""})
    ex.kill(signal.SIGHUP)
    wait_until(lambda: "client tokens re-read: 1 users" in ex.text(), 15, "the second reload")
    assert attempt("alice") == "AuthenticationError"
    (grain_procs.tmp / "client-tokens").write_text("carol short\n")
    ex.kill(signal.SIGHUP)
    wait_until(lambda: "keeping the old client tokens" in ex.text(), 15, "the refusal")
    assert attempt("carol") == "1"

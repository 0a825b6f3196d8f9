"""A Grain client that stays connected until told to go.

usage: lingering_client.py ADDRESS TOKEN_FILE N
Runs N jobs (``netjobs.noop``), prints ``ready``, then waits for a line on stdin and ends
its program normally (its session says goodbye to the executor).
"""

import sys

import netjobs
import trio

import grain
from grain.resource import Cores


async def main() -> None:
    n = int(sys.argv[3])
    async with grain.open_waitgroup() as wg:
        for i in range(n):
            wg.submit(Cores(1), netjobs.noop, i)
    assert wg.results == list(range(n)), wg.results
    print("ready", flush=True)
    await trio.to_thread.run_sync(sys.stdin.readline)


if __name__ == "__main__":
    token = open(sys.argv[2]).read().strip()
    grain.run_combine(main, address=sys.argv[1], token=token, heartbeat=0.5, timeout=2)

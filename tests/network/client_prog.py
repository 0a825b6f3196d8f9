"""A Grain client run as its own process by the network tests (to be killed mid-run).

usage: client_prog.py ADDRESS TOKEN_FILE MARKER_DIR TAG N SECONDS
Submits N jobs ``mark_and_sleep(MARKER_DIR, TAG-i, SECONDS)`` of Cores(1) in one wait
group and prints ``done`` when they all end.
"""

import sys

import netjobs

import grain
from grain.resource import Cores


async def main() -> None:
    _, address, token_file, marks, tag, n, seconds = sys.argv
    async with grain.open_waitgroup() as wg:
        for i in range(int(n)):
            wg.submit(Cores(1), netjobs.mark_and_sleep, marks, f"{tag}-{i}", float(seconds))
    print("done", wg.results, flush=True)


if __name__ == "__main__":
    token = open(sys.argv[2]).read().strip()
    grain.run_combine(main, address=sys.argv[1], token=token, heartbeat=0.5, timeout=2)

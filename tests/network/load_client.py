"""One client of the load test, as its own process.

usage: load_client.py ADDRESS TOKEN_FILE CLIENT_NO N
Submits N no-op jobs of Cores(1), each returning (CLIENT_NO, i), checks every result and
prints ``ok CLIENT_NO N SECONDS``; exits non-zero on any wrong or missing result.
"""

import sys
import time

import netjobs

import grain
from grain.resource import Cores


async def main(client: int, n: int) -> None:
    t0 = time.monotonic()
    async with grain.open_waitgroup() as wg:
        for i in range(n):
            wg.submit(Cores(1), netjobs.noop, (client, i))
    results = wg.results
    if results != [(client, i) for i in range(n)]:
        bad = [i for i, r in enumerate(results) if r != (client, i)][:5]
        print(f"wrong results in client {client}: first at {bad}", flush=True)
        sys.exit(3)
    print(f"ok {client} {n} {time.monotonic() - t0:.2f}", flush=True)


if __name__ == "__main__":
    address, token_file, client, n = sys.argv[1:]
    token = open(token_file).read().strip()
    grain.run_combine(lambda: main(int(client), int(n)), address=address, token=token)

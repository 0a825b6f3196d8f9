"""A real executor that reports the garbage cycles among its frozen objects.

usage: gc_probe_executor.py LISTEN HTTP TOKEN_FILE HEARTBEAT TIMEOUT GRACE

It runs ``run_executor`` as ``grain executor`` does (listener, HTTP endpoints, its
scheduled full collections), with clients' and lost workers' grace of GRACE seconds, and
answers two signals:

- SIGUSR1: collect, then freeze everything, as each scheduled full collection does to
  what survives it; prints ``frozen N``;
- SIGUSR2: collect what is not frozen, then thaw and walk everything once, as the deep
  collection does; prints ``check K: {type: count}`` of the objects that only the deep
  walk found unreachable (cycles among frozen objects), then freezes again.
"""

import gc
import json
import signal
import sys
from collections import Counter
from functools import partial

import trio

from grain.auth import Credentials
from grain.executor.run import run_executor


def deep_garbage() -> dict[str, int]:
    """What a deep collection would free that the scheduled ones cannot (by type)."""
    gc.collect(2)
    gc.unfreeze()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect(2)
        found = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage)
        gc.garbage.clear()
    finally:
        gc.set_debug(0)
        gc.freeze()
    return dict(found.most_common())


async def main() -> None:
    listen, http, token_file, heartbeat, timeout, grace = sys.argv[1:]
    with open(token_file) as f:
        credentials = Credentials.from_files(token=f.read().strip(), client_tokens=None,
                                             worker_token=None)
    with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGUSR2) as signals:
        async with trio.open_nursery() as n:
            await n.start(partial(run_executor, listen=listen, http=http,
                                  credentials=credentials, heartbeat=float(heartbeat),
                                  timeout=float(timeout), client_grace=float(grace),
                                  worker_grace=float(grace)))
            checks = 0
            async for sig in signals:
                if sig == signal.SIGUSR1:
                    gc.collect(2)
                    gc.freeze()
                    print(f"frozen {gc.get_freeze_count()}", flush=True)
                else:
                    checks += 1
                    print(f"check {checks}: {json.dumps(deep_garbage())}", flush=True)


if __name__ == "__main__":
    trio.run(main)

"""One measurement in a fresh process: ``python -m bench.child SYSTEM WORKLOAD PARAMS OUT``.

Started by ``bench.run`` (with a timeout) for every system, workload and round, so systems
never share a process, a warm cache or a leftover thread. ``T0`` is taken before any
system is imported (the cold start counts imports). Writes ``{"ok", "metrics" | "error",
"leaked"}`` as JSON to OUT; processes the system left behind are stopped and named.
"""

import time

T0 = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from typing import Any  # noqa: E402


def main() -> int:
    system, workload, params_json, out_path = sys.argv[1:5]
    params = json.loads(params_json)
    from . import procs
    from .scale import STANDALONE, run_standalone
    from .systems import Unavailable, run_on
    from .workloads import WORKLOADS
    fn = WORKLOADS[workload][0]
    out: dict[str, Any] = {"system": system, "workload": workload}
    try:
        if workload == "cpu":
            metrics = fn(system, params, T0)
        elif system == "bare-tcp":
            metrics = fn(params)
        elif workload in STANDALONE:
            metrics = run_standalone(workload, system, params)
        else:
            metrics = run_on(system, fn, params, T0)
        out.update(ok=True, metrics=metrics)
    except Unavailable as e:
        out.update(ok=False, unavailable=True, error=str(e))
    except BaseException as e:  # noqa: BLE001 - reported, never raised to the harness
        out.update(ok=False, error=f"{type(e).__name__}: {e}",
                   traceback=traceback.format_exc()[-4000:])
    finally:
        out["leaked"] = procs.reap()
    with open(out_path, "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())

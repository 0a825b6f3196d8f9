"""The executor's status document: what ``/status``, ``grain status`` and the web page show.

Built on demand from the executor's live state (nothing is kept for it on the job path).
The fields are documented in docs/interfaces.md.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .._version import __version__

if TYPE_CHECKING:
    from .core import Executor


def build_status(ex: Executor) -> dict[str, Any]:
    """The JSON document served at /status."""
    workers = []
    tc = fc = 0
    tm = fm = 0.0
    for w in ex.workers.values():
        st = ex.placement.workers.get(w.wid)
        if st is None:
            continue
        stat = st.free.stat()
        cfree, ctot = stat.get("Cores", (0, 0))
        mfree, mtot = stat.get("Memory", (0, 0))
        tc, fc, tm, fm = tc + ctot, fc + cfree, tm + mtot, fm + mfree
        workers.append({
            "name": w.name, "address": w.link.peer,
            "cores_total": ctot, "cores_free": cfree,
            "memory_total_gb": mtot, "memory_free_gb": round(mfree, 3),
            "running_jobs": len(st.running),
            "cpuset": w.info.get("cpuset", []),
            "exclusive_cpuset": bool(w.info.get("exclusive_cpuset", False)),
            "gpus": w.info.get("gpus", []),
            "capacity": repr(st.total),
            "draining": w.draining,
        })
    users = []
    connected = {s.user for s in ex.sessions.values()}
    for name, st in sorted(ex.placement.user_stats().items()):
        if not (st.queued or st.running or name in connected):
            continue
        users.append({"name": name, "weight": st.weight,
                      "running_jobs": st.running, "queued_jobs": st.queued,
                      "cores_in_use": st.cores, "memory_in_use_gb": round(st.memory, 3),
                      "share": round(st.share, 4),
                      "max_cores": st.max_cores, "max_queued": st.max_queued})
    led = ex.ledger
    return {
        "version": __version__,
        "name": ex.name,
        "uptime_s": round(time.time() - ex.started_at, 3),
        "queue_length": len(ex.placement),
        "clients": sum(1 for s in ex.sessions.values() if s.link is not None),
        "sessions": len(ex.sessions),
        "running_jobs": sum(len(s.running) for s in ex.placement.workers.values()),
        "cores": {"total": tc, "free": fc},
        "memory_gb": {"total": tm, "free": round(fm, 3)},
        "jobs": {"submitted": led.submitted, "started": led.started,
                 "finished": led.finished, "failed": led.failed,
                 "cancelled": led.cancelled, "retried": led.retried,
                 "handed_back": led.handed_back, "reattached": led.reattached},
        "workers": workers,
        "users": users,
        "recovering": ex.recovery_status(),
    }

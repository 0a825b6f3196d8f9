"""``grain status``: fetch an executor's status document and draw it as tables.

Once (the default) it prints a summary line, the workers, the users and, after a restart,
what the executor waits for. ``--watch`` redraws the same tables in place (rich ``Live``)
every ``--interval`` seconds until Ctrl-C, with a jobs column per worker and the recent
failures; a failed fetch is shown in place of the tables and retried.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import trio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..net import transport
from ..net.endpoints import parse_endpoint
from ..net.link import StreamLink
from ..protocol import handshake
from ..protocol import messages as m


async def fetch_over_grain(address: str, token: str, tls_ca: str | None = None,
                           timeout: float = 10.0, *, server_hostname: str | None = None
                           ) -> dict[str, Any]:
    """Ask an executor for its status as an authenticated observer.

    With TLS the certificate is verified against ``server_hostname`` when given (a
    GrainCluster's Service name, whatever address the port-forward dials), else the
    address's host."""
    ep = parse_endpoint(address)
    ctx = transport.client_ssl_context(tls_ca) if tls_ca else None
    try:
        return await _fetch(ep, ctx, token, timeout, server_hostname)
    except trio.TooSlowError:
        raise TimeoutError(f"no status from {ep} within {timeout:g}s (is the executor "
                           f"stopped or overloaded?)") from None
    except OSError as e:
        if isinstance(e, ssl.SSLError):
            raise
        raise ConnectionError(f"{e} (is `grain executor` running and listening at {ep}?)"
                              ) from None


async def _fetch(ep: Any, ctx: ssl.SSLContext | None, token: str,
                 timeout: float, server_hostname: str | None = None) -> dict[str, Any]:
    with trio.fail_after(timeout):
        stream = await transport.connect(ep, ctx, server_hostname=server_hostname)
        _, dec = await handshake.dial(stream, token, "observer", {"name": "grain status"},
                                      expect_role="executor")
        link = StreamLink(stream, str(ep), m.ExecutorToObserver, decoder=dec)
        async with trio.open_nursery() as n:
            link.start(n)
            link.send(m.StatusRequest())
            while True:
                for h, _ in await link.receive():
                    if type(h) is m.Status:
                        link.close("done")
                        return h.doc


def _fetch_http(http: str) -> dict[str, Any]:
    url = http.rstrip("/") + "/status"
    if "://" not in url:
        url = "http://" + url
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - operator-given URL
        doc: dict[str, Any] = json.loads(r.read())
        return doc


@contextlib.contextmanager
def status_source(*, executor: str | None = None, http: str | None = None,
                  cluster: str | None = None, namespace: str | None = None,
                  token: str | None = None, tls_ca: str | None = None
                  ) -> Iterator[Callable[[], dict[str, Any]]]:
    """A function that fetches the status document from whichever source was named, for
    as long as the ``with`` block lasts (a GrainCluster's port-forward stays open)."""
    if http:
        yield lambda: _fetch_http(http)
        return
    if cluster:
        from ..client.discovery import open_cluster
        with open_cluster(cluster, namespace) as conn:
            ca = tls_ca or conn.ca_file
            yield lambda: trio.run(partial(fetch_over_grain, conn.address, conn.token, ca,
                                           server_hostname=conn.server_hostname))
        return
    if not token:
        token = os.environ.get("GRAIN_TOKEN")
    if not token:
        raise PermissionError("the executor needs the token: --token-file or GRAIN_TOKEN "
                              "(or use --http, which needs none)")
    addr = executor or ""
    yield lambda: trio.run(fetch_over_grain, addr, token, tls_ca)


def fetch_status(*, executor: str | None = None, http: str | None = None,
                 cluster: str | None = None, namespace: str | None = None,
                 token: str | None = None, tls_ca: str | None = None) -> dict[str, Any]:
    """The status document from whichever source was named."""
    with status_source(executor=executor, http=http, cluster=cluster, namespace=namespace,
                       token=token, tls_ca=tls_ca) as fetch:
        return fetch()


# -- drawing ---------------------------------------------------------------------------

def _duration(s: float) -> str:
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s // 60:.0f}m{s % 60:02.0f}s"
    return f"{s // 3600:.0f}h{s % 3600 // 60:02.0f}m"


def _summary(doc: dict[str, Any]) -> Text:
    cores, mem = doc.get("cores", {}), doc.get("memory_gb", {})
    return Text.from_markup(
        f"[bold]Grain {doc.get('version', '?')}[/] up {doc.get('uptime_s', 0):.0f}s — "
        f"workers {len(doc.get('workers', []))}, cores free {cores.get('free', 0)}/"
        f"{cores.get('total', 0)}, memory free {mem.get('free', 0):g}/{mem.get('total', 0):g} GB, "
        f"running {doc.get('running_jobs', 0)}, queued {doc.get('queue_length', 0)}, "
        f"clients {doc.get('clients', 0)}")


def _recovery(doc: dict[str, Any]) -> Text | None:
    rec = doc.get("recovering")
    if not rec:
        return None
    parts = [f"worker {name} ({n} jobs)"
             for name, n in (rec.get("waiting_for_workers") or {}).items()]
    waits = []
    if parts:
        waits.append("waiting for " + ", ".join(parts))
    if rec.get("jobs_held_back"):
        waits.append(f"{rec['jobs_held_back']} resubmitted jobs held back")
    if rec.get("jobs_waiting_for_their_client"):
        waits.append(f"{rec['jobs_waiting_for_their_client']} running jobs waiting for "
                     f"their client")
    if rec.get("sessions_waiting_for_their_client"):
        waits.append(f"{rec['sessions_waiting_for_their_client']} sessions waiting for "
                     f"their client")
    t = Text("recovering: ", style="bold yellow")
    t.append("; ".join(waits) or "waiting")
    return t


def _jobs_on(w: dict[str, Any]) -> str:
    """``fn (user) ×n`` per distinct job running on a worker, from its core map."""
    # a job on several cores appears once per core: one entry per distinct job
    seen: dict[Any, dict[str, Any]] = {}
    for entry in (w.get("core_map") or {}).values():
        seen[entry.get("id")] = entry
    counts = Counter((e.get("job", "?"), e.get("user", "?")) for e in seen.values())
    return ", ".join(f"{job} ({user})" + (f" ×{n}" if n > 1 else "")
                     for (job, user), n in sorted(counts.items()))


def _workers_table(doc: dict[str, Any], jobs: bool) -> Table:
    t = Table(title="workers")
    cols = ["name", "address", "cores free/total", "memory free/total (GB)", "running",
            "cpuset", "exclusive"]
    for col in cols + (["jobs"] if jobs else []):
        t.add_column(col)
    for w in doc.get("workers", []):
        cpus = w.get("cpuset", [])
        name = str(w.get("name")) + (" (draining)" if w.get("draining") else "")
        row = [name, str(w.get("address")),
               f"{w.get('cores_free')}/{w.get('cores_total')}",
               f"{w.get('memory_free_gb', 0):g}/{w.get('memory_total_gb', 0):g}",
               str(w.get("running_jobs")),
               ",".join(map(str, cpus[:16])) + ("…" if len(cpus) > 16 else ""),
               "yes" if w.get("exclusive_cpuset") else "no"]
        t.add_row(*row, *([_jobs_on(w)] if jobs else []))
    return t


def _users_table(doc: dict[str, Any]) -> Table:
    t = Table(title="users")
    for col in ("user", "weight", "running", "queued", "cores", "memory (GB)", "share",
                "finished", "failed"):
        t.add_column(col)
    for u in doc.get("users", []):
        t.add_row(str(u.get("name")), f"{u.get('weight', 1):g}", str(u.get("running_jobs")),
                  str(u.get("queued_jobs")), str(u.get("cores_in_use")),
                  f"{u.get('memory_in_use_gb', 0):g}", f"{100 * u.get('share', 0):.1f}%",
                  str(u.get("finished_jobs", "")), str(u.get("failed_jobs", "")))
    return t


def _failures_table(doc: dict[str, Any], n: int = 5) -> Table | None:
    fails = doc.get("failures") or []
    if not fails:
        return None
    t = Table(title=f"recent failures (last {min(n, len(fails))} of {len(fails)})")
    for col in ("when", "user", "job", "worker", "how", "error"):
        t.add_column(col)
    for f in fails[:n]:
        when = time.strftime("%H:%M:%S", time.localtime(f.get("at", 0)))
        err = str(f.get("error", ""))
        t.add_row(when, str(f.get("user")), str(f.get("job")), str(f.get("worker")),
                  str(f.get("end")), err[:200] + ("…" if len(err) > 200 else ""))
    return t


def status_view(doc: dict[str, Any], *, watch: bool = False) -> Group:
    """The status as renderables: summary, recovery (when recovering), workers, users
    (and, when watching, each worker's jobs and the recent failures)."""
    parts: list[RenderableType] = [_summary(doc)]
    rec = _recovery(doc)
    if rec is not None:
        parts.append(rec)
    parts.append(_workers_table(doc, jobs=watch))
    if doc.get("users"):
        parts.append(_users_table(doc))
    if watch:
        fails = _failures_table(doc)
        if fails is not None:
            parts.append(fails)
    return Group(*parts)


def render_status(doc: dict[str, Any], console: Console | None = None) -> None:
    """Print the status once."""
    (console or Console()).print(status_view(doc))


def watch_status(fetch: Callable[[], dict[str, Any]], *, interval: float = 1.0,
                 count: int | None = None, console: Console | None = None,
                 errors: tuple[type[BaseException], ...] = (OSError, TimeoutError),
                 first: dict[str, Any] | None = None) -> None:
    """Redraw the status every ``interval`` seconds (``count`` times, or until Ctrl-C),
    starting with ``first`` when given. A fetch that fails shows its error in place of
    the tables, and is retried."""
    console = console or Console()
    done = 0
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while count is None or done < count:
            started = time.monotonic()
            try:
                doc = first if first is not None else fetch()
                first = None
                view: RenderableType = status_view(doc, watch=True)
            except errors as e:
                view = Text(f"cannot get the status: {e} (retrying)", style="red")
            footer = Text(f"updated {time.strftime('%H:%M:%S')} · every {interval:g}s · "
                          f"Ctrl-C to stop", style="dim")
            live.update(Group(view, footer), refresh=True)
            done += 1
            if count is not None and done >= count:
                break
            time.sleep(max(0.0, interval - (time.monotonic() - started)))

"""``grain status``: fetch an executor's status document and draw it as tables."""

from __future__ import annotations

import json
import os
import ssl
import urllib.request
from typing import Any

import trio
from rich.console import Console
from rich.table import Table

from ..net import transport
from ..net.endpoints import parse_endpoint
from ..net.link import StreamLink
from ..protocol import handshake
from ..protocol import messages as m


async def fetch_over_grain(address: str, token: str, tls_ca: str | None = None,
                           timeout: float = 10.0) -> dict[str, Any]:
    """Ask an executor for its status as an authenticated observer."""
    ep = parse_endpoint(address)
    ctx = transport.client_ssl_context(tls_ca) if tls_ca else None
    try:
        return await _fetch(ep, ctx, token, timeout)
    except trio.TooSlowError:
        raise TimeoutError(f"no status from {ep} within {timeout:g}s (is the executor "
                           f"stopped or overloaded?)") from None
    except OSError as e:
        if isinstance(e, ssl.SSLError):
            raise
        raise ConnectionError(f"{e} (is `grain executor` running and listening at {ep}?)"
                              ) from None


async def _fetch(ep: Any, ctx: ssl.SSLContext | None, token: str,
                 timeout: float) -> dict[str, Any]:
    with trio.fail_after(timeout):
        stream = await transport.connect(ep, ctx)
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


def fetch_status(*, executor: str | None = None, http: str | None = None,
                 cluster: str | None = None, namespace: str | None = None,
                 token: str | None = None, tls_ca: str | None = None) -> dict[str, Any]:
    """The status document from whichever source was named."""
    if http:
        url = http.rstrip("/") + "/status"
        if "://" not in url:
            url = "http://" + url
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - operator-given URL
            return json.loads(r.read())
    if cluster:
        from ..client.discovery import open_cluster
        with open_cluster(cluster, namespace) as conn:
            return trio.run(fetch_over_grain, conn.address, conn.token, tls_ca)
    if not token:
        token = os.environ.get("GRAIN_TOKEN")
    if not token:
        raise PermissionError("the executor needs the token: --token-file or GRAIN_TOKEN "
                              "(or use --http, which needs none)")
    return trio.run(fetch_over_grain, executor, token, tls_ca)


def render_status(doc: dict[str, Any], console: Console | None = None) -> None:
    """Print the status as a summary line and a table of workers."""
    console = console or Console()
    cores, mem = doc.get("cores", {}), doc.get("memory_gb", {})
    console.print(
        f"[bold]Grain {doc.get('version', '?')}[/] up {doc.get('uptime_s', 0):.0f}s — "
        f"workers {len(doc.get('workers', []))}, cores free {cores.get('free', 0)}/"
        f"{cores.get('total', 0)}, memory free {mem.get('free', 0):g}/{mem.get('total', 0):g} GB, "
        f"running {doc.get('running_jobs', 0)}, queued {doc.get('queue_length', 0)}, "
        f"clients {doc.get('clients', 0)}")
    t = Table(title="workers")
    for col in ("name", "address", "cores free/total", "memory free/total (GB)", "running",
                "cpuset", "exclusive"):
        t.add_column(col)
    for w in doc.get("workers", []):
        cpus = w.get("cpuset", [])
        t.add_row(str(w.get("name")), str(w.get("address")),
                  f"{w.get('cores_free')}/{w.get('cores_total')}",
                  f"{w.get('memory_free_gb', 0):g}/{w.get('memory_total_gb', 0):g}",
                  str(w.get("running_jobs")),
                  ",".join(map(str, cpus[:16])) + ("…" if len(cpus) > 16 else ""),
                  "yes" if w.get("exclusive_cpuset") else "no")
    console.print(t)

"""The executor's HTTP endpoints: ``/healthz``, ``/status`` (JSON), ``/metrics`` (Prometheus).

Metrics are read from the executor's counters at scrape time by a custom collector, so the
job hot path pays nothing for them. The HTTP side is deliberately tiny: GET only, one
request per connection, bounded request size and time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..net import transport
from ..net.endpoints import Endpoint, parse_endpoint
from .core import Executor

log = logging.getLogger("grain.executor")

MAX_REQUEST = 8192


class ExecutorCollector:
    """Prometheus collector over an ``Executor``'s live state."""

    def __init__(self, executor: Executor) -> None:
        self.x = executor

    def collect(self) -> Iterator[Metric]:
        led = self.x.ledger
        for name, value, doc in (
                ("grain_jobs_submitted", led.submitted, "Jobs submitted"),
                ("grain_jobs_started", led.started, "Job starts (retries count again)"),
                ("grain_jobs_finished", led.finished, "Jobs that ended with a value"),
                ("grain_jobs_failed", led.failed, "Jobs that ended with an error"),
                ("grain_jobs_cancelled", led.cancelled, "Jobs cancelled"),
                ("grain_jobs_retried", led.retried, "Jobs re-queued after a worker loss")):
            yield CounterMetricFamily(name, doc, value=value)
        st = self.x.status()
        yield GaugeMetricFamily("grain_queue_length", "Jobs waiting", value=st["queue_length"])
        yield GaugeMetricFamily("grain_running_jobs", "Jobs running", value=st["running_jobs"])
        yield GaugeMetricFamily("grain_cores_in_use", "Cores allocated to running jobs",
                                value=st["cores"]["total"] - st["cores"]["free"])
        yield GaugeMetricFamily("grain_cores_total", "Cores registered", value=st["cores"]["total"])
        yield GaugeMetricFamily("grain_workers", "Workers connected", value=len(st["workers"]))
        yield GaugeMetricFamily("grain_clients", "Clients connected", value=st["clients"])
        yield CounterMetricFamily("grain_placement_seconds",
                                  "Total time jobs waited from submission to start",
                                  value=self.x.placement_seconds_sum)
        yield CounterMetricFamily("grain_placements", "Jobs placed",
                                  value=self.x.placement_count)


def _response(status: str, body: bytes, ctype: str) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n")
    return head.encode() + body


class HttpServer:
    """Serves an executor's health, status and metrics."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(ExecutorCollector(executor))
        self.bound: Endpoint | None = None

    def route(self, path: str) -> bytes:
        path = path.split("?", 1)[0]
        if path == "/healthz":
            return _response("200 OK", b"ok\n", "text/plain")
        if path == "/status":
            return _response("200 OK", json.dumps(self.executor.status()).encode(),
                             "application/json")
        if path == "/metrics":
            return _response("200 OK", generate_latest(self.registry),
                             "text/plain; version=0.0.4")
        return _response("404 Not Found", b"not found: try /healthz /status /metrics\n",
                         "text/plain")

    async def serve(self, address: str, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        ep = parse_endpoint(address if "://" in address else "grain://" + address, 8080)
        listeners, self.bound = await transport.open_listeners(ep)
        log.info("executor HTTP on http://%s:%d (/healthz /status /metrics)",
                 self.bound.host, self.bound.port)
        task_status.started(self.bound)
        await transport.serve(listeners, self._handle)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        try:
            with trio.move_on_after(5):
                data = b""
                while b"\r\n\r\n" not in data and len(data) < MAX_REQUEST:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    data += chunk
                line = data.split(b"\r\n", 1)[0].decode("latin-1").split()
                if len(line) < 2 or line[0] not in ("GET", "HEAD"):
                    await stream.send_all(_response("400 Bad Request", b"GET only\n",
                                                    "text/plain"))
                    return
                await stream.send_all(self.route(line[1]))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

"""The executor's Prometheus metrics: every family ``/metrics`` exposes, and the collector
that reads them from the executor's live state at scrape time.

``prometheus_client`` is imported by ``registry_for`` only, at the first scrape: it and
what it imports cost an idle executor about 3 MiB.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.registry import Collector, CollectorRegistry

    from .core import Executor

#: what ``generate_latest`` writes (prometheus_client's CONTENT_TYPE_LATEST has moved on)
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class MetricDef:
    """One metric family: its name as exposed, its type, help and labels."""

    name: str
    kind: str          # "counter" or "gauge"
    help: str
    labels: tuple[str, ...] = ()


#: every family /metrics exposes (counters with their ``_total`` suffix, as scraped)
METRICS: tuple[MetricDef, ...] = (
    MetricDef("grain_jobs_submitted_total", "counter", "Jobs submitted"),
    MetricDef("grain_jobs_started_total", "counter", "Job starts (retries count again)"),
    MetricDef("grain_jobs_finished_total", "counter", "Jobs that ended with a value"),
    MetricDef("grain_jobs_failed_total", "counter", "Jobs that ended with an error"),
    MetricDef("grain_jobs_cancelled_total", "counter", "Jobs cancelled"),
    MetricDef("grain_jobs_retried_total", "counter", "Jobs re-queued after a worker loss"),
    MetricDef("grain_queue_length", "gauge", "Jobs waiting"),
    MetricDef("grain_running_jobs", "gauge", "Jobs running"),
    MetricDef("grain_cores_in_use", "gauge", "Cores allocated to running jobs"),
    MetricDef("grain_cores_total", "gauge", "Cores registered"),
    MetricDef("grain_workers", "gauge", "Workers connected"),
    MetricDef("grain_clients", "gauge", "Clients connected"),
    MetricDef("grain_placement_seconds_total", "counter",
              "Total time jobs waited from submission to start"),
    MetricDef("grain_placements_total", "counter", "Jobs placed"),
    MetricDef("grain_event_loop_busy_seconds_total", "counter",
              "Time the executor's event loop spent running tasks (busy / elapsed: its load)"),
    MetricDef("grain_event_loop_longest_stall_seconds", "gauge",
              "Longest time the event loop went without polling its sockets, last 1-2 min"),
    MetricDef("grain_user_running_jobs", "gauge", "Jobs running, per user", ("user",)),
    MetricDef("grain_user_queued_jobs", "gauge", "Jobs waiting, per user", ("user",)),
    MetricDef("grain_user_cores_in_use", "gauge", "Cores held by a user's jobs", ("user",)),
    MetricDef("grain_user_share", "gauge",
              "A user's dominant share of the cluster (0..1)", ("user",)),
)


def _family(d: MetricDef, value: float | None = None) -> Any:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    if d.kind == "counter":
        return CounterMetricFamily(d.name.removesuffix("_total"), d.help, value=value)
    if d.labels:
        return GaugeMetricFamily(d.name, d.help, labels=list(d.labels))
    return GaugeMetricFamily(d.name, d.help, value=value)


class ExecutorCollector:
    """Prometheus collector over an ``Executor``'s live state: O(workers + users)."""

    def __init__(self, executor: Executor) -> None:
        self.x = executor

    def values(self) -> dict[str, float]:
        """The unlabelled metrics' values, by exposed name."""
        x, led, lw = self.x, self.x.ledger, self.x.loop_watch
        total = free = 0
        for st in x.placement.workers.values():
            cfree, ctot = st.free.stat().get("Cores", (0, 0))
            total, free = total + int(ctot), free + int(cfree)
        return {
            "grain_jobs_submitted_total": led.submitted,
            "grain_jobs_started_total": led.started,
            "grain_jobs_finished_total": led.finished,
            "grain_jobs_failed_total": led.failed,
            "grain_jobs_cancelled_total": led.cancelled,
            "grain_jobs_retried_total": led.retried,
            "grain_queue_length": len(x.placement),
            "grain_running_jobs": sum(len(s.running) for s in x.placement.workers.values()),
            "grain_cores_in_use": total - free,
            "grain_cores_total": total,
            "grain_workers": len(x.workers),
            "grain_clients": sum(1 for s in x.sessions.values() if s.link is not None),
            "grain_placement_seconds_total": x.placement_seconds_sum,
            "grain_placements_total": x.placement_count,
            "grain_event_loop_busy_seconds_total": lw.busy_seconds if lw else 0.0,
            "grain_event_loop_longest_stall_seconds": lw.longest() if lw else 0.0,
        }

    def collect(self) -> Iterator[Any]:
        values = self.values()
        users = self.x.placement.user_stats()
        per_user = {
            "grain_user_running_jobs": lambda s: s.running,
            "grain_user_queued_jobs": lambda s: s.queued,
            "grain_user_cores_in_use": lambda s: s.cores,
            "grain_user_share": lambda s: s.share,
        }
        for d in METRICS:
            if d.labels:
                fam = _family(d)
                for name, st in sorted(users.items()):
                    fam.add_metric([name], per_user[d.name](st))
                yield fam
            else:
                yield _family(d, values[d.name])



def registry_for(executor: Executor) -> CollectorRegistry:
    """A registry holding the executor's collector (imports prometheus_client)."""
    from prometheus_client import CollectorRegistry
    registry = CollectorRegistry(auto_describe=True)
    collector: Collector = ExecutorCollector(executor)
    registry.register(collector)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry's metrics as Prometheus text."""
    from prometheus_client import generate_latest
    return generate_latest(registry)

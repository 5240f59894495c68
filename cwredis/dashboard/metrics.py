"""``/metrics``: a ``prometheus_client`` collector that reads Redis at scrape time.

Nothing is counted in the dashboard process, so a restart of it loses
nothing: the gauges are read as they are now, and ``cwredis_jobs_completed``
comes from the counters complete.lua keeps in Redis (``done:<queue>``,
``failed:<queue>``). Failures that scripts other than complete.lua record
(a job lost with its workers, the last rejection) are counted in all but not
per queue; they appear with ``queue="(other)"``, so the per-queue series
still add up to the total and each stays monotonic.
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .views import Views

#: The label of completions no queue is known for (see the module docstring).
OTHER_QUEUE = "(other)"


class CwredisCollector(Collector):
    """Gauges and counters of one cwredis, one read of Redis per scrape (:meth:`Views.counts`)."""

    def __init__(self, views: Views) -> None:
        self.views = views

    def collect(self) -> Iterator[Metric]:
        counts = self.views.counts()
        pending = GaugeMetricFamily("cwredis_queue_pending", "Jobs waiting in a queue.", labels=["queue"])
        for name, n in counts.pending.items():
            pending.add_metric([name], n)
        yield pending
        running = GaugeMetricFamily("cwredis_queue_running", "Jobs of a queue running now.", labels=["queue"])
        for name, n in counts.running.items():
            running.add_metric([name or OTHER_QUEUE], n)
        yield running
        yield GaugeMetricFamily("cwredis_jobs_running", "Jobs whose function has started.",
                                value=counts.running_total)
        yield GaugeMetricFamily("cwredis_jobs_delayed", "Jobs waiting for a later start (retry back-off).",
                                value=counts.delayed)
        yield GaugeMetricFamily("cwredis_jobs_failed", "Failed jobs kept for requeue or purge.", value=counts.failed)
        yield GaugeMetricFamily("cwredis_workers", "Live worker processes.", value=len(counts.workers))
        yield GaugeMetricFamily("cwredis_sessions", "Sessions kept in Redis.", value=counts.sessions)
        completed = CounterMetricFamily("cwredis_jobs_completed", "Jobs that ended, by queue and outcome.",
                                        labels=["queue", "outcome"])
        for outcome in ("done", "failed"):
            per_queue = counts.completed(outcome)
            for name, n in sorted(per_queue.items()):
                completed.add_metric([name, outcome], n)
            other = counts.stats.get(outcome, 0) - sum(per_queue.values())
            if other > 0:
                completed.add_metric([OTHER_QUEUE, outcome], other)
        yield completed


def registry_for(views: Views) -> CollectorRegistry:
    """A registry holding only our collector (no process metrics of the dashboard itself)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CwredisCollector(views))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format of everything in ``registry``."""
    return generate_latest(registry)

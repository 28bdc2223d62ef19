"""Prometheus metrics of ``mmops serve``, in a registry of the process's own."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mmops.domain.pnl import StopLossLevel
from mmops.services.coverage import PairCoverage
from mmops.services.migration import SessionMigration
from mmops.services.settlement import SessionResult

_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter("mmops_job_runs", "Job runs.", ["job"], registry=r)
        self.failures = Counter("mmops_job_failures", "Job runs that failed.", ["job"], registry=r)
        self.duration = Histogram(
            "mmops_job_duration_seconds",
            "Job run duration.",
            ["job"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.last_success = Gauge(
            "mmops_last_success_timestamp_seconds",
            "When the job last succeeded (Unix time).",
            ["job"],
            registry=r,
        )
        self.tp_placed = Counter("mmops_tp_placed", "Take-profits placed.", ["pair"], registry=r)
        self.tp_skipped = Counter(
            "mmops_tp_skipped", "Positions skipped, by reason.", ["reason"], registry=r
        )
        self.tp_failed = Counter(
            "mmops_tp_failed", "Take-profits that failed.", ["pair"], registry=r
        )
        self.uncovered = Gauge(
            "mmops_positions_uncovered",
            "Coverable positions not fully covered.",
            ["session", "pair"],
            registry=r,
        )
        self.oldest = Gauge(
            "mmops_oldest_uncovered_seconds",
            "Age of the oldest coverable uncovered position (0: none).",
            ["session", "pair"],
            registry=r,
        )
        self.coverage = Gauge(
            "mmops_coverage_percent",
            "Share of coverable quantity covered.",
            ["session", "pair"],
            registry=r,
        )
        self.stoploss = Gauge(
            "mmops_stoploss_level",
            "Stop-loss level: 0 none, 1 warn, 2 halt, 3 flatten.",
            ["session"],
            registry=r,
        )
        self.migration_lag = Gauge(
            "mmops_migration_lag_seconds",
            "Age of the oldest ended session not yet migrated.",
            registry=r,
        )
        self.rejects = Counter(
            "mmops_migration_rejects", "Records quarantined by migration.", registry=r
        )
        self.migrated = Counter(
            "mmops_migration_sessions", "Sessions migrated, by outcome.", ["state"], registry=r
        )

    def job(self, job: str, seconds: float, ok: bool, now: float) -> None:
        self.runs.labels(job).inc()
        self.duration.labels(job).observe(seconds)
        if ok:
            self.last_success.labels(job).set(now)
        else:
            self.failures.labels(job).inc()

    def settlement(self, results: Iterable[SessionResult]) -> None:
        for result in results:
            for pair, report in result.pairs.items():
                self.tp_placed.labels(pair).inc(sum(not p.dry_run for p in report.placed))
                self.tp_failed.labels(pair).inc(len(report.failed))
                for skipped in report.skipped:
                    self.tp_skipped.labels(skipped.reason.value).inc()
            if result.stoploss is not None:
                level = result.stoploss.level
                self.stoploss.labels(result.session_id).set(_SEVERITY[level])

    def coverage_of(self, session_id: str, pairs: Iterable[PairCoverage]) -> None:
        for c in pairs:
            self.coverage.labels(session_id, c.symbol).set(float(c.percent))
            self.oldest.labels(session_id, c.symbol).set(c.oldest_uncovered_s or 0)
            self.uncovered.labels(session_id, c.symbol).set(c.uncovered_positions)

    def migration(self, results: Iterable[SessionMigration], lag_seconds: float | None) -> None:
        for r in results:
            self.migrated.labels(r.state).inc()
            self.rejects.inc(r.rejects)
        self.migration_lag.set(lag_seconds or 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


_SEVERITY = {level: n for n, level in enumerate(StopLossLevel)}

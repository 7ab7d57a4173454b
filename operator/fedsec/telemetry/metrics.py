"""Prometheus metrics of the aggregator. One registry per aggregator, so tests can run several."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server, write_to_textfile


class AggregatorMetrics:
    def __init__(self, job: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["job"]
        self.job = job
        self.rounds = Counter(
            "fedsec_rounds_total", "Round attempts by outcome", labels + ["outcome"], registry=self.registry
        )
        self.round_seconds = Histogram(
            "fedsec_round_duration_seconds",
            "Wall time of committed rounds",
            labels,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
            registry=self.registry,
        )
        self.updates = Counter(
            "fedsec_updates_total", "Client answers by outcome", labels + ["outcome"], registry=self.registry
        )
        self.rejected = Counter(
            "fedsec_messages_rejected_total", "Messages refused, by reason", labels + ["reason"], registry=self.registry
        )
        self.participants = Gauge(
            "fedsec_round_participants", "Participants of the current round", labels, registry=self.registry
        )
        self.contributors = Gauge(
            "fedsec_round_contributors", "Contributors of the last committed round", labels, registry=self.registry
        )
        self.current_round = Gauge("fedsec_round", "Last committed round", labels, registry=self.registry)
        self.model_version = Gauge("fedsec_model_version", "Current model version", labels, registry=self.registry)
        self.key_epoch = Gauge("fedsec_key_epoch", "Key epoch the aggregator signs in", labels, registry=self.registry)
        self.key_rotations = Counter("fedsec_key_rotations_total", "Key rotations", labels, registry=self.registry)
        self.metric = Gauge(
            "fedsec_model_metric", "Holdout metric of the current model", labels + ["metric"], registry=self.registry
        )
        self.site_epsilon = Gauge(
            "fedsec_privacy_epsilon_spent", "Epsilon this job spent at a site, as the site last reported it",
            labels + ["site"], registry=self.registry,
        )

    def observe_site_metrics(self, per_site: dict[str, dict[str, float]]) -> None:
        """What sites report with their update that is per site, not averaged: today their epsilon."""
        for site, m in per_site.items():
            if "epsilon" in m:
                self.site_epsilon.labels(self.job, site).set(m["epsilon"])

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(server.server_port)


def write_privacy_textfile(path: Path, job: str, section: dict[str, Any]) -> None:
    """Privacy gauges in Prometheus' text format (for node-exporter's textfile collector), from a
    summary's ``privacy`` section: written by the local launcher after every committed round; the
    operator will export the same gauges from the FederatedClients' status.

    ``fedsec_privacy_epsilon_spent{job,site}`` (this job at each site), ``fedsec_privacy_epsilon_target{job}``,
    ``fedsec_privacy_site_epsilon_total{site}`` and ``fedsec_privacy_site_budget_remaining{site}``
    (all jobs on the site's data), ``fedsec_privacy_sites_refused{job}``.
    """
    reg = CollectorRegistry()
    spent = Gauge("fedsec_privacy_epsilon_spent", "Epsilon this job spent at a site", ["job", "site"], registry=reg)
    target = Gauge("fedsec_privacy_epsilon_target", "The job's target epsilon per site", ["job"], registry=reg)
    total = Gauge("fedsec_privacy_site_epsilon_total", "Epsilon spent on a site by every job", ["site"], registry=reg)
    remaining = Gauge("fedsec_privacy_site_budget_remaining", "Epsilon left in a site's budget", ["site"], registry=reg)
    refused = Gauge("fedsec_privacy_sites_refused", "Sites that refused the job", ["job"], registry=reg)
    if section.get("target_epsilon") is not None:
        target.labels(job).set(section["target_epsilon"])
    for site, row in section.get("sites", {}).items():
        spent.labels(job, site).set(row["epsilon_this_job"])
        total.labels(site).set(row["spent_total"])
        if row.get("remaining") is not None:
            remaining.labels(site).set(row["remaining"])
    refused.labels(job).set(len(section.get("refused", {})))
    write_to_textfile(str(path), reg)

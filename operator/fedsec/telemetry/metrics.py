"""Prometheus metrics of the aggregator. One registry per aggregator, so tests can run several."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


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
        self.metric = Gauge(
            "fedsec_model_metric", "Holdout metric of the current model", labels + ["metric"], registry=self.registry
        )

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(server.server_port)

"""The summary's privacy section and the metrics textfile, read from the sites' ledgers."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsec.privacy.ledger import REFUSED, JobRef, Release, SiteLedger, Terms, ledger_path
from fedsec.privacy.report import one_line, privacy_section
from fedsec.telemetry.metrics import AggregatorMetrics, write_privacy_textfile
from privacy_manifests import job, site


def test_section_shows_spend_budget_remaining_and_refusals(tmp_path: Path) -> None:
    j = job()
    a, b = site("a", budget=4.0), site("b", budget=0.5)
    la = SiteLedger(ledger_path(tmp_path, "a"), "a")
    t = Terms("dp-sgd", 5.0, 10, 1e-5)
    la.charge(JobRef("other", "old"), Release(1, 1, "x", 4.0, 1.0, 1), t, b"old", delta=1e-5, accountant="rdp")
    la.finish(JobRef("other", "old"), "done")
    la.charge(JobRef("uid", "bc"), Release(1, 2, "m", 5.0, 0.5, 2), t, b"bc", delta=1e-5, accountant="rdp")
    la.finish(JobRef("uid", "bc"), "done")
    SiteLedger(ledger_path(tmp_path, "b"), "b").set_status(JobRef("uid", "bc"), REFUSED, "too little budget")
    sec = privacy_section(j, "uid", [a, b], {"b": "too little budget"}, tmp_path)
    ra = sec["sites"]["a"]
    assert ra["rounds_released"] == 1 and 0 < ra["epsilon_this_job"] < ra["spent_total"]
    assert ra["remaining"] == pytest.approx(4.0 - ra["spent_total"])
    assert sec["sites"]["b"]["status"] == REFUSED and sec["refused"] == {"b": "too little budget"}
    assert sec["epsilon_spent_max"] == ra["epsilon_this_job"]
    assert "of target 1.2" in one_line(sec)
    prom = tmp_path / "privacy.prom"
    write_privacy_textfile(prom, "bc", sec)
    text = prom.read_text()
    assert 'fedsec_privacy_epsilon_spent{job="bc",site="a"}' in text
    assert 'fedsec_privacy_sites_refused{job="bc"} 1.0' in text


def test_aggregator_gauge_takes_the_sites_reported_epsilon() -> None:
    m = AggregatorMetrics("bc")
    m.observe_site_metrics({"a": {"epsilon": 0.7}, "b": {"auc": 0.9}})
    assert m.registry.get_sample_value("fedsec_privacy_epsilon_spent", {"job": "bc", "site": "a"}) == 0.7
    assert m.registry.get_sample_value("fedsec_privacy_epsilon_spent", {"job": "bc", "site": "b"}) is None

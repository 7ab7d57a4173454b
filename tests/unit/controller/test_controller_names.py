"""Child names: valid DNS-1123 labels even for the longest job and site names, deterministic, and
distinct wherever two children could otherwise meet in one namespace."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from fedsec.controller.names import (
    LABEL_JOB, LABEL_JOB_UID, LABEL_MANAGED, LABEL_ROLE, LABEL_SITE, MANAGED_BY, JobNames, ledger_claim,
)

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
UID_A = "11111111-1111-4111-8111-111111111111"
UID_B = "22222222-2222-4222-8222-222222222222"

J63 = "j" * 62 + "9"
S63 = "s" * 62 + "9"
# Truncation lands on a '-' (at 20, 25, 31 and 48 characters): the trim must not leave it dangling.
DASHY = "".join("-" if i in (18, 19, 24, 29, 30, 47) else "d" for i in range(63))
DASHY_SITE = DASHY.replace("d", "e")
NAMES = ["a", "breast-cancer", "x" * 40, "x" * 41, J63, DASHY, "a-" * 31 + "b", "0" * 63]
SITES = ["h", "hospital-01", S63, DASHY_SITE, "s-" * 31 + "t"]


def _children(names: JobNames, site: str) -> dict[str, str]:
    return {
        "ca_secret": names.ca_secret, "aggregator_secret": names.aggregator_secret,
        "operator_secret": names.operator_secret, "aggregator": names.aggregator, "checkpoints": names.checkpoints,
        "service_account": names.service_account, "site": names.site(site), "site_secret": names.site_secret(site),
        # reconcile names a reopened run's client Job f"{site(...)}-{run}"
        "site_run": f"{names.site(site)}-9999", "ledger": ledger_claim(site),
    }


def _assert_valid(children: dict[str, str]) -> None:
    for what, name in children.items():
        assert len(name) <= 63, (what, name, len(name))
        assert DNS_LABEL.match(name), (what, name)


def test_inputs_are_what_they_claim() -> None:
    for n in NAMES + SITES:
        assert len(n) <= 63 and DNS_LABEL.match(n), n
    assert len(J63) == len(S63) == len(DASHY) == len(DASHY_SITE) == 63
    assert DASHY[19] == DASHY[24] == DASHY[30] == DASHY_SITE[24] == DASHY_SITE[47] == "-"


@pytest.mark.parametrize("job", NAMES)
@pytest.mark.parametrize("site", SITES)
def test_every_child_name_is_a_dns_label(job: str, site: str) -> None:
    _assert_valid(_children(JobNames(job, UID_A), site))


@settings(max_examples=200, deadline=None)
@given(job=hs.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z"),
       site=hs.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z"))
def test_every_child_name_is_a_dns_label_for_any_valid_names(job: str, site: str) -> None:
    _assert_valid(_children(JobNames(job, UID_A), site))


def test_short_names_are_kept_readable() -> None:
    n = JobNames("breast-cancer", UID_A)
    assert (n.ca_secret, n.aggregator_secret, n.operator_secret) == (
        "breast-cancer-ca", "breast-cancer-aggregator-pki", "breast-cancer-operator-pki")
    assert (n.aggregator, n.checkpoints, n.service_account) == (
        "breast-cancer-aggregator", "breast-cancer-checkpoints", "breast-cancer-runtime")
    assert re.fullmatch(r"breast-cancer-hospital-01-[0-9a-f]{8}", n.site("hospital-01"))
    assert n.site_secret("hospital-01") == n.site("hospital-01") + "-pki"
    assert ledger_claim("hospital-01") == "fedsec-ledger-hospital-01"
    assert JobNames("x" * 40, UID_A).base == "x" * 40
    assert re.fullmatch(r"x{31}-[0-9a-f]{8}", JobNames("x" * 41, UID_A).base)


def test_names_are_deterministic() -> None:
    for job in NAMES:
        for site in SITES:
            assert _children(JobNames(job, UID_A), site) == _children(JobNames(job, UID_A), site)


def test_same_job_name_with_another_uid_gets_other_site_children() -> None:
    """Two jobs of one name in different namespaces may select the same site: their client Jobs,
    ConfigMaps and Secrets share the site's namespace."""
    for job in NAMES:
        for site in SITES:
            a, b = JobNames(job, UID_A), JobNames(job, UID_B)
            assert a.site(site) != b.site(site)
            assert a.site_secret(site) != b.site_secret(site)


def test_two_sites_of_one_job_get_other_children() -> None:
    n = JobNames(J63, UID_A)
    pairs = [("hospital-01", "hospital-02"), (S63, S63[:-1] + "8"), ("a" * 25 + "b", "a" * 25 + "c"),
             (DASHY_SITE, DASHY_SITE[:-1] + "y")]
    for s1, s2 in pairs:
        assert n.site(s1) != n.site(s2), (s1, s2)
        assert n.site_secret(s1) != n.site_secret(s2), (s1, s2)


def test_long_job_names_with_one_prefix_get_other_children() -> None:
    a, b = JobNames("p" * 40 + "-one", UID_A), JobNames("p" * 40 + "-two", UID_A)
    assert a.base != b.base
    assert {a.aggregator, a.ca_secret, a.checkpoints}.isdisjoint({b.aggregator, b.ca_secret, b.checkpoints})


def test_one_jobs_children_of_one_kind_do_not_collide() -> None:
    for job in NAMES:
        n = JobNames(job, UID_A)
        secrets = [n.ca_secret, n.aggregator_secret, n.operator_secret] + [n.site_secret(s) for s in SITES]
        assert len(set(secrets)) == len(secrets), job
        config_maps = [n.aggregator] + [n.site(s) for s in SITES]
        assert len(set(config_maps)) == len(config_maps), job


def test_two_long_sites_get_their_own_ledger_claim() -> None:
    assert ledger_claim("a" * 48 + "-one") != ledger_claim("a" * 48 + "-two")


def test_labels_are_valid_label_values() -> None:
    for job in NAMES:
        for site in SITES:
            labels = JobNames(job, UID_A).labels("client", site)
            assert labels == {LABEL_MANAGED: MANAGED_BY, LABEL_JOB: job, LABEL_JOB_UID: UID_A,
                              LABEL_ROLE: "client", LABEL_SITE: site}
            for v in labels.values():
                assert len(v) <= 63 and LABEL_VALUE.match(v), v
    assert JobNames("breast-cancer", UID_A).labels() == {
        LABEL_MANAGED: MANAGED_BY, LABEL_JOB: "breast-cancer", LABEL_JOB_UID: UID_A}

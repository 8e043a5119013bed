"""Envoys' HDS reports -> one verdict per backend (health/aggregation.py): a strict
majority of fresh words ejects, a tie keeps a backend, every address must pass,
a hand-over's unchecked hosts eject nothing, stale and departed checkers fall away."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import health_check_pb2

from xds_server.health.aggregation import Reports, health_of_status, stale_after
from xds_server.model.intent import Health

HEALTHY, UNHEALTHY, UNKNOWN = Health.HEALTHY, Health.UNHEALTHY, Health.UNKNOWN
REPORT_S, TIMEOUT_S = 1.0, 0.5
IP = "10.0.0.1"


def reports() -> Reports:
    return Reports(stale_after_s=stale_after(REPORT_S), warmup_s=TIMEOUT_S)


def settled(agg: Reports, node: str, backend: str, health: Health, at: float) -> None:
    """A checker past its warm-up: it reported the address healthy once before."""
    agg.record(node, backend, {IP: HEALTHY}, at - 2 * TIMEOUT_S)
    agg.record(node, backend, {IP: health}, at)


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ((HEALTHY,), HEALTHY),
        ((UNHEALTHY,), UNHEALTHY),
        ((HEALTHY, UNHEALTHY), HEALTHY),  # a tie keeps it
        ((UNHEALTHY, UNHEALTHY), UNHEALTHY),
        ((HEALTHY, UNHEALTHY, UNHEALTHY), UNHEALTHY),
        ((HEALTHY, HEALTHY, UNHEALTHY), HEALTHY),
        ((UNHEALTHY, UNHEALTHY, HEALTHY, HEALTHY), HEALTHY),
    ],
)
def test_a_strict_majority_of_fresh_words_ejects(
    words: tuple[Health, ...], expected: Health
) -> None:
    agg = reports()
    nodes = [f"envoy-{i}" for i in range(len(words))]
    for node, word in zip(nodes, words, strict=True):
        settled(agg, node, "b", word, at=100.0)
    verdict = agg.verdict("b", nodes, now=100.5)
    assert verdict.health is expected
    assert verdict.checked_by == tuple(nodes)
    assert verdict.reported_at == dict.fromkeys(nodes, 100.0)


def test_no_report_means_no_verdict() -> None:
    """The caller then probes the backend itself."""
    verdict = reports().verdict("b", ["envoy-0", "envoy-1"], now=10.0)
    assert (verdict.health, verdict.checked_by, dict(verdict.reported_at)) == (None, (), {})


def test_a_stale_report_does_not_count_but_its_time_is_shown() -> None:
    agg = reports()
    settled(agg, "envoy-0", "b", UNHEALTHY, at=100.0)
    settled(agg, "envoy-1", "b", HEALTHY, at=103.5)
    fresh_limit = 100.0 + stale_after(REPORT_S)
    assert agg.verdict("b", ["envoy-0", "envoy-1"], now=fresh_limit).health is HEALTHY  # tie
    later = agg.verdict("b", ["envoy-0", "envoy-1"], now=fresh_limit + 0.1)
    assert later.health is HEALTHY and later.checked_by == ("envoy-1",)
    assert later.reported_at == {"envoy-0": 100.0, "envoy-1": 103.5}
    assert agg.verdict("b", ["envoy-0"], now=fresh_limit + 0.1).health is None


def test_only_assigned_checkers_count() -> None:
    """A checker the backend was taken from may still report it once; it is ignored."""
    agg = reports()
    settled(agg, "old", "b", UNHEALTHY, at=100.0)
    settled(agg, "new", "b", HEALTHY, at=100.0)
    verdict = agg.verdict("b", ["new"], now=100.1)
    assert (verdict.health, verdict.checked_by, dict(verdict.reported_at)) == (
        HEALTHY,
        ("new",),
        {"new": 100.0},
    )


def test_a_dropped_checker_is_forgotten() -> None:
    agg = reports()
    settled(agg, "envoy-0", "b", UNHEALTHY, at=100.0)
    agg.drop("envoy-0")
    agg.drop("never-seen")  # idempotent
    assert agg.verdict("b", ["envoy-0"], now=100.1).health is None


def test_every_address_must_be_healthy_on_a_checker() -> None:
    """A DNS name with several addresses: one failing address makes the checker's
    word UNHEALTHY, as the controller's own probe of every address does."""
    agg = reports()
    addresses = {"10.0.0.1": HEALTHY, "10.0.0.2": HEALTHY}
    assert agg.record("envoy-0", "b", addresses, at=100.0) is HEALTHY
    assert agg.record("envoy-0", "b", addresses | {"10.0.0.2": UNHEALTHY}, at=101.0) is UNHEALTHY
    assert agg.verdict("b", ["envoy-0"], now=101.0).health is UNHEALTHY


def test_an_unchecked_host_of_a_new_assignment_ejects_nothing() -> None:
    """Envoy reports a host it has not checked yet as UNHEALTHY; within the warm-up
    (the check timeout since the first report naming it) that is no word."""
    agg = reports()
    assert agg.record("envoy-0", "b", {IP: UNHEALTHY}, at=100.0) is UNKNOWN
    assert agg.verdict("b", ["envoy-0"], now=100.0).health is None
    assert agg.record("envoy-0", "b", {IP: UNHEALTHY}, at=100.0 + TIMEOUT_S) is UNHEALTHY
    assert agg.verdict("b", ["envoy-0"], now=100.0 + TIMEOUT_S).health is UNHEALTHY


def test_after_a_first_pass_a_failure_counts_at_once() -> None:
    agg = reports()
    assert agg.record("envoy-0", "b", {IP: HEALTHY}, at=100.0) is HEALTHY
    assert agg.record("envoy-0", "b", {IP: UNHEALTHY}, at=100.1) is UNHEALTHY


def test_a_new_address_of_a_known_backend_warms_up_alone() -> None:
    """The name resolved to one more address: until that one is checked the checker
    has no word (the others are healthy), then its failure counts."""
    agg = reports()
    agg.record("envoy-0", "b", {"10.0.0.1": HEALTHY}, at=100.0)
    grown = {"10.0.0.1": HEALTHY, "10.0.0.2": UNHEALTHY}
    assert agg.record("envoy-0", "b", grown, at=101.0) is UNKNOWN
    assert agg.record("envoy-0", "b", grown, at=101.0 + TIMEOUT_S) is UNHEALTHY


def test_a_gap_in_reports_starts_the_warm_up_again() -> None:
    """Handed back after a while (or Envoy restarted): the hosts are new to it again."""
    agg = reports()
    agg.record("envoy-0", "b", {IP: HEALTHY}, at=100.0)
    after_gap = 100.0 + stale_after(REPORT_S) + 1
    assert agg.record("envoy-0", "b", {IP: UNHEALTHY}, at=after_gap) is UNKNOWN


def test_a_report_without_addresses_is_no_word() -> None:
    """A DNS name without addresses: Envoy has nothing to check."""
    agg = reports()
    assert agg.record("envoy-0", "b", {}, at=100.0) is UNKNOWN
    verdict = agg.verdict("b", ["envoy-0"], now=100.0)
    assert (verdict.health, verdict.checked_by, dict(verdict.reported_at)) == (
        None,
        (),
        {"envoy-0": 100.0},
    )


def test_retain_forgets_removed_backends() -> None:
    agg = reports()
    settled(agg, "envoy-0", "gone", UNHEALTHY, at=100.0)
    settled(agg, "envoy-0", "kept", UNHEALTHY, at=100.0)
    agg.retain({"kept"})
    assert agg.verdict("gone", ["envoy-0"], now=100.0).health is None
    assert agg.verdict("kept", ["envoy-0"], now=100.0).health is UNHEALTHY


@pytest.mark.parametrize(
    ("status", "health"),
    [
        (health_check_pb2.HEALTHY, HEALTHY),
        (health_check_pb2.DEGRADED, HEALTHY),
        (health_check_pb2.UNHEALTHY, UNHEALTHY),
        (health_check_pb2.TIMEOUT, UNHEALTHY),
        (health_check_pb2.DRAINING, UNHEALTHY),
        (health_check_pb2.UNKNOWN, UNKNOWN),
        (99, UNKNOWN),
    ],
)
def test_envoy_statuses_map_to_health(status: int, health: Health) -> None:
    assert health_of_status(status) is health

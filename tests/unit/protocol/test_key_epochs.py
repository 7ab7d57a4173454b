"""The key-epoch rules: when the aggregator rotates, which epochs it accepts, what sites sign in."""

from __future__ import annotations

import pytest

from fedsec.protocol.key_epochs import EpochState, EpochWindow, RotationPolicy, SiteEpochs, issued_epochs

EVERY2_GRACE1 = RotationPolicy(every_rounds=2, grace_rounds=1)


def run_rounds(state: EpochState, policy: RotationPolicy, rounds: int, key_arrives: bool = True) -> list[int]:
    """The epoch each round runs in, rotating at round starts as the aggregator does."""
    epochs = []
    for _ in range(rounds):
        if state.due(policy) and key_arrives:
            state = state.rotated()
        epochs.append(state.epoch)
        state = state.committed()
    return epochs


def test_window_contains_and_reads() -> None:
    w = EpochWindow(2, 3)
    assert [e in w for e in (1, 2, 3, 4)] == [False, True, True, False]
    assert "2" not in w  # type: ignore[operator]  # only epochs, never what a header might smuggle
    assert str(w) == "2 to 3" and str(EpochWindow(4, 4)) == "4" and str(EpochWindow(5)) == "5 or later"
    assert 10**9 in EpochWindow(5)


def test_never_rotating_stays_in_epoch_zero() -> None:
    policy = RotationPolicy()
    assert not policy.rotates
    assert run_rounds(EpochState(), policy, 50) == [0] * 50
    assert issued_epochs(0, policy) == {0}


def test_rotation_every_n_rounds() -> None:
    assert run_rounds(EpochState(), EVERY2_GRACE1, 7) == [0, 0, 1, 1, 2, 2, 3]
    assert run_rounds(EpochState(), RotationPolicy(1, 0), 4) == [0, 1, 2, 3]


def test_a_missing_key_postpones_the_rotation_never_the_round() -> None:
    state = EpochState(0, 0)
    assert run_rounds(state, EVERY2_GRACE1, 5, key_arrives=False) == [0] * 5
    late = EpochState(0, 5)
    assert late.due(EVERY2_GRACE1) and late.rotated() == EpochState(1, 0)  # one step, however late


@pytest.mark.parametrize(("state", "policy", "accepted"), [
    (EpochState(0, 0), EVERY2_GRACE1, (0,)),  # nothing before epoch 0
    (EpochState(1, 0), EVERY2_GRACE1, (0, 1)),  # first round of epoch 1: epoch 0 in its grace
    (EpochState(1, 1), EVERY2_GRACE1, (1,)),  # grace over
    (EpochState(3, 0), RotationPolicy(2, 0), (3,)),  # no grace at all
    (EpochState(3, 2), RotationPolicy(2, 3), (2, 3)),  # a long grace never reaches back two epochs
])
def test_accepted_epochs(state: EpochState, policy: RotationPolicy, accepted: tuple[int, ...]) -> None:
    window = state.accepted(policy)
    assert tuple(e for e in range(-1, state.epoch + 3) if e in window) == accepted


def test_state_round_trips_through_json_and_defaults_for_old_state() -> None:
    s = EpochState(4, 1)
    assert EpochState.from_json(s.to_json()) == s
    assert EpochState.from_json({"status": "Running"}) == EpochState(0, 0)


def test_keys_are_issued_one_epoch_ahead() -> None:
    assert issued_epochs(0, EVERY2_GRACE1) == {0, 1}
    assert issued_epochs(7, EVERY2_GRACE1) == {7, 8}


def test_a_site_follows_the_aggregator_and_never_goes_back() -> None:
    site = SiteEpochs(aggregator=3)  # from the oldest key it holds
    assert 2 not in site.accepted() and 3 in site.accepted() and 9 in site.accepted()
    site.saw(5)
    site.saw(4)  # an older reply cannot pull it back
    assert site.aggregator == 5 and 4 not in site.accepted()
    assert [e for e in range(8) if e in site.peers()] == [4, 5]


@pytest.mark.parametrize(("aggregator", "held", "signs"), [
    (3, {3, 4}, 3),  # the usual case
    (4, {3, 4}, 4),  # it rotated: follow
    (5, {3, 4}, 4),  # rotated twice and our newest key is late: the newest below (grace may take it)
    (3, {5, 6}, 5),  # nothing at or below: the oldest held
    (3, set(), None),
])
def test_signing_epoch(aggregator: int, held: set[int], signs: int | None) -> None:
    assert SiteEpochs(aggregator).signing_epoch(held) == signs

"""Which Envoys check which backend (health/assignment.py): min(k, n) distinct
checkers each, loads within one of each other, sticky across joins and leaves,
and the same answer for the same inputs in any order."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence

import pytest

from xds_server.health.assignment import assign

Assignment = Mapping[str, tuple[str, ...]]
# (backends, checkers, k): small and uneven, one checker short of k, many backends.
SHAPES = [(10, 3, 2), (7, 5, 2), (100, 10, 2), (30, 4, 3), (1000, 50, 2), (5, 2, 2), (3, 8, 1)]


def names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


def loads(assignment: Assignment, checkers: Sequence[str]) -> Counter[str]:
    counted = Counter(dict.fromkeys(checkers, 0))
    counted.update(node for nodes in assignment.values() for node in nodes)
    return counted


def spread(assignment: Assignment, checkers: Sequence[str]) -> int:
    counted = loads(assignment, checkers).values()
    return max(counted) - min(counted)


def moved(before: Assignment, after: Assignment) -> set[str]:
    return {name for name in after if before.get(name) != after[name]}


@pytest.mark.parametrize(("b", "n", "k"), SHAPES)
def test_each_backend_gets_min_k_n_distinct_checkers_evenly_spread(b: int, n: int, k: int) -> None:
    backends, checkers = names("backend", b), names("envoy", n)
    assignment = assign(backends, checkers, k)
    assert set(assignment) == set(backends)
    for nodes in assignment.values():
        assert len(set(nodes)) == len(nodes) == min(k, n)
        assert set(nodes) <= set(checkers)
    assert spread(assignment, checkers) <= 1


@pytest.mark.parametrize(("b", "n", "k"), [s for s in SHAPES if s[1] > 2])
def test_a_leaving_checker_moves_only_its_own_backends(b: int, n: int, k: int) -> None:
    """Every backend the leaver checked gets one replacement; no other backend moves,
    and the loads stay within one."""
    backends, checkers = names("backend", b), names("envoy", n)
    before = assign(backends, checkers, k)
    leaver = checkers[n // 2]
    remaining = [c for c in checkers if c != leaver]
    after = assign(backends, remaining, k, before)
    own = {name for name, nodes in before.items() if leaver in nodes}
    assert moved(before, after) == own
    for name in own:  # the other checkers of each stayed
        assert set(before[name]) - {leaver} <= set(after[name])
    assert spread(after, remaining) <= 1


@pytest.mark.parametrize(("b", "n", "k"), SHAPES)
def test_a_joining_checker_takes_about_its_share(b: int, n: int, k: int) -> None:
    """A new checker takes the share balance needs (total / (n + 1), rounded either
    way), each moved backend changes one checker, and the rest stays put."""
    backends, checkers = names("backend", b), names("envoy", n)
    before = assign(backends, checkers, k)
    joined = [*checkers, "envoy-new"]
    after = assign(backends, joined, k, before)
    assert spread(after, joined) <= 1
    taken = {name for name, nodes in after.items() if "envoy-new" in nodes}
    share = b * min(k, n + 1) / (n + 1)
    assert int(share) <= len(taken) <= int(share) + 1
    if k <= n:  # k was met before: every move is one checker handed to the newcomer
        assert moved(before, after) == taken
        for name in taken:
            assert len(set(before[name]) - set(after[name])) == 1


def test_fewer_checkers_than_k_means_all_of_them() -> None:
    assignment = assign(names("backend", 4), ["envoy-b", "envoy-a"], k=3)
    assert set(assignment.values()) == {("envoy-a", "envoy-b")}


def test_no_checker_connected_gives_empty_tuples() -> None:
    """The caller probes these itself (controller fallback)."""
    assert assign(["a", "b"], [], k=2) == {"a": (), "b": ()}
    assert assign(["a"], [], k=2, previous={"a": ("gone",)}) == {"a": ()}


def test_no_backends_gives_nothing() -> None:
    assert assign([], ["envoy-0"], k=2) == {}


def test_k_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        assign(["a"], ["envoy-0"], k=0)


def test_the_same_inputs_in_any_order_give_the_same_assignment() -> None:
    """Replicas and restarts agree: order and duplicates of the inputs do not matter,
    nor the order of a previous assignment's tuples."""
    backends, checkers = names("backend", 60), names("envoy", 7)
    first = assign(backends, checkers, 2)
    shuffled_b, shuffled_c = backends[::-1] + backends[:5], random.Random(1).sample(checkers, 7)
    assert assign(shuffled_b, shuffled_c, 2) == first
    previous = {name: nodes[::-1] for name, nodes in reversed(first.items())}
    assert assign(backends, checkers, 2, previous) == first
    left = assign(backends, checkers[1:], 2, first)
    assert assign(shuffled_b, [c for c in shuffled_c if c != checkers[0]], 2, previous) == left


def test_a_stable_assignment_is_kept_as_it_is() -> None:
    backends, checkers = names("backend", 40), names("envoy", 6)
    first = assign(backends, checkers, 2)
    assert assign(backends, checkers, 2, first) == first


def test_previous_checkers_that_left_or_are_unknown_are_ignored() -> None:
    """A previous assignment naming departed nodes or removed backends only seeds
    what still exists."""
    previous = {"a": ("envoy-0", "ghost"), "removed": ("envoy-1",)}
    assignment = assign(["a", "b"], ["envoy-0", "envoy-1"], 2, previous)
    assert assignment == {"a": ("envoy-0", "envoy-1"), "b": ("envoy-0", "envoy-1")}


def test_a_smaller_k_drops_checkers_and_stays_balanced() -> None:
    backends, checkers = names("backend", 20), names("envoy", 5)
    three = assign(backends, checkers, 3)
    two = assign(backends, checkers, 2, three)
    assert all(len(nodes) == 2 for nodes in two.values())
    assert spread(two, checkers) <= 1
    # Mostly a subset of the previous three; balance moves a few (k is start-only:
    # a previous assignment of another k is rare).
    kept = [name for name in backends if set(two[name]) <= set(three[name])]
    assert len(kept) >= len(backends) * 3 // 4


def test_new_backends_go_to_the_least_loaded_checkers() -> None:
    backends, checkers = names("backend", 9), names("envoy", 3)
    before = assign(backends, checkers, 1)
    after = assign([*backends, "late-0", "late-1"], checkers, 1, before)
    assert moved(before, {n: after[n] for n in backends}) == set()
    assert spread(after, checkers) <= 1

"""The pure rule of store/lineage.py: what a replica does with what Redis holds."""

from __future__ import annotations

import pytest

from tests.factories import local_settings
from xds_server.store.lineage import Position, Stored, Verdict, judge

INTENT = local_settings().intent


def stored(revision: int, epoch: str = "e1", base: int = 0, current_run: bool = True) -> Stored:
    return Stored(revision, INTENT, epoch, base, current_run)


@pytest.mark.parametrize(
    ("mine", "held", "recovering", "verdict"),
    [
        (Position("", 0), None, False, Verdict.SEED),  # a first start
        (Position("e1", 2), None, False, Verdict.RECOVER),  # Redis came back empty
        (Position("", 0), None, True, Verdict.RECOVER),  # fresh, a recovery under way
        (Position("e1", 2), stored(3), False, Verdict.ADOPT),  # a write elsewhere
        (Position("e1", 2), stored(2), False, Verdict.ADOPT),  # in sync
        (Position("e1", 2), stored(1), False, Verdict.RECOVER),  # went back
        (Position("e1", 2), stored(2, current_run=False), False, Verdict.RECOVER),  # restarted
        (Position("e1", 2), stored(2, "e2", base=2), False, Verdict.ADOPT),  # restored ours
        (Position("e1", 1), stored(5, "e2", base=2), False, Verdict.ADOPT),  # we were behind
        (Position("e1", 3), stored(2, "e2", base=2), False, Verdict.RECOVER),  # ours is newer
        (Position("e1", 3), stored(1, "e2", base=0), False, Verdict.RECOVER),  # a fresh seed
        (Position("e1", 3), stored(4, "e2", base=2), False, Verdict.DIVERGED),  # both wrote
        (Position("", 0), stored(4, "e2", base=2), False, Verdict.ADOPT),  # a fresh replica
    ],
)
def test_judge(mine: Position, held: Stored | None, recovering: bool, verdict: Verdict) -> None:
    assert judge(mine, held, recovering).verdict is verdict

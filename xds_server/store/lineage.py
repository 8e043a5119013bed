"""Whether what Redis holds continues the history a replica served: the pure rule
behind the Redis store's data-loss detection (docs/replicas.md, "Redis losing data").

Every accepted write has a revision, one more than the one it was computed from,
so the accepted writes form one linear history. Redis is its only shared copy; if
Redis loses data (restarted without persistence, loaded an older file, a key
deleted), the newest accepted state survives only in the replicas' memory. Revision
numbers alone cannot tell a continuation from a second history that reused them (a
replica re-seeds at revision 1 and accepts a write at 2, while another served its
own 2), so the stored intent carries an *epoch*: a random id drawn whenever a
history (re)starts, with `base`, the newest revision of the previous history it
contains (0 for a first seed), and the id of the Redis process that last wrote it
(`run`), so that a restart is recognised even when the data looks intact.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from xds_server.model.intent import Intent


@dataclass(frozen=True)
class Position:
    """Where a replica stands: the epoch and revision of the intent it serves
    (revision 0: it has adopted nothing yet)."""

    epoch: str
    revision: int


@dataclass(frozen=True)
class Stored:
    """What Redis holds, as one read saw it."""

    revision: int
    intent: Intent
    epoch: str
    base: int  # the newest revision of the previous history this epoch contains
    current_run: bool  # written by the Redis process running now (not loaded from a file)

    @property
    def start(self) -> int:
        """The revision this epoch began at (a first seed is revision 1)."""
        return max(self.base, 1)

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.revision)


class Verdict(enum.Enum):
    ADOPT = "adopt"  # Redis continues our history (or holds all of it): serve Redis's
    SEED = "seed"  # a first start: nothing stored, nothing served, nothing to recover
    RECOVER = "recover"  # Redis lost data, or may have: reconcile the replicas' copies
    DIVERGED = "diverged"  # both hold accepted writes the other lacks: adopt, report


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    why: str


def judge(mine: Position, stored: Stored | None, recovering: bool) -> Judgement:
    """What a replica at `mine` does with what Redis holds (`recovering`: a recovery
    is under way there)."""
    if recovering:
        return Judgement(Verdict.RECOVER, "the replicas are reconciling after a data loss")
    if stored is None:
        if mine.revision == 0:
            return Judgement(Verdict.SEED, "Redis holds no intent")
        return Judgement(
            Verdict.RECOVER, f"Redis holds no intent; this replica served revision {mine.revision}"
        )
    if not stored.current_run:
        return Judgement(
            Verdict.RECOVER,
            "Redis restarted: the intent it loaded may be older than what replicas served",
        )
    if stored.epoch == mine.epoch:
        if stored.revision >= mine.revision:
            return Judgement(Verdict.ADOPT, "same history")
        return Judgement(
            Verdict.RECOVER,
            f"Redis went back from revision {mine.revision} to {stored.revision}",
        )
    if mine.revision == 0 or stored.base >= mine.revision:
        return Judgement(Verdict.ADOPT, "a new history that contains ours")
    lacking = f"revisions {stored.base + 1} to {mine.revision}"
    if stored.revision == stored.start:
        return Judgement(
            Verdict.RECOVER,
            f"Redis's intent was restored without {lacking}, which this replica served",
        )
    return Judgement(
        Verdict.DIVERGED,
        f"Redis's intent was restored without {lacking}, which this replica served, and "
        f"took writes since (revision {stored.revision}); this replica adopts it: "
        f"the changes of {lacking} are lost",
    )

"""Which versions a classifier keeps, and why: the retention policy and the plan of a prune (no I/O here).

A version is kept when any of these holds (the first that does is its reason):

1. it is the **active** version;
2. it is one of the active version's **ancestors**, the nearest ``keep_ancestors`` of them (parent, grandparent...):
   the rollback targets along the lineage that is served;
3. it was **active at any time in the last** ``keep_days`` days (a pointer move to it, or away from it, within the
   window): the versions an operator has just moved away from are the likeliest rollback targets;
4. it was **created in the last** ``keep_days`` days, whatever its status: a candidate waiting for approval, a
   rejected version to inspect or promote by force;
5. a live job **trains from it** (its parent): the job reads the parent's bundle.

Everything else is pruned: a rejected or candidate version older than ``keep_days``, a retired version outside the
lineage window that has not served for ``keep_days``. Pruning deletes a version's files; its row stays, with status
``pruned``, its report and its place in the lineage, so the dashboard's history, the accuracy matrix and the audit
still read it, and a rollback to it is refused (410) saying it was pruned.

The default (``DEFAULT``: 3 ancestors, 30 days) keeps the rollbacks that are made in practice (to the previous version
or the one before: a bad promotion is noticed within days, well inside a month's window) and lets everything a month
old that nobody served go; with content stored once, a version's own files are its weights and state, so the three
ancestors cost little. A deployment changes the default (``ENGRAM_RETENTION_KEEP_ANCESTORS``,
``ENGRAM_RETENTION_KEEP_DAYS``) and a classifier can have its own (``PUT /v1/classifiers/{name}/retention``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MOVES = ("promote", "rollback", "auto-promote")  # audit actions that move the active pointer (not "prune")


@dataclass(frozen=True)
class RetentionPolicy:
    keep_ancestors: int = 3  # the active version's nearest ancestors kept (rollback targets along its lineage)
    keep_days: float = 30.0  # versions active, or created, in this many days are kept

    def __post_init__(self) -> None:
        if isinstance(self.keep_ancestors, bool) or not isinstance(self.keep_ancestors, int) or self.keep_ancestors < 0:
            raise ValueError(f"keep_ancestors must be a whole number >= 0, not {self.keep_ancestors!r}")
        if isinstance(self.keep_days, bool) or not isinstance(self.keep_days, int | float) or not self.keep_days >= 0:
            raise ValueError(f"keep_days must be a number of days >= 0, not {self.keep_days!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, default: RetentionPolicy | None = None) -> RetentionPolicy:
        """The policy stored for a classifier (None: ``default``); unknown keys are refused (ValueError)."""
        if data is None:
            return default or DEFAULT
        unknown = set(data) - {"keep_ancestors", "keep_days"}
        if unknown:
            raise ValueError(f"unknown retention field(s) {sorted(unknown)}; it takes keep_ancestors and keep_days")
        base = default or DEFAULT
        return cls(data.get("keep_ancestors", base.keep_ancestors), data.get("keep_days", base.keep_days))

    def to_dict(self) -> dict[str, Any]:
        return {"keep_ancestors": self.keep_ancestors, "keep_days": self.keep_days}


DEFAULT = RetentionPolicy()


@dataclass(frozen=True)
class VersionFacts:
    """What the plan reads of a version."""

    number: int
    status: str
    parent: int | None
    created_at: dt.datetime


@dataclass(frozen=True)
class PointerMove:
    """One audit entry that moved the active pointer."""

    from_version: int | None
    to_version: int
    at: dt.datetime


def plan(
    versions: Iterable[VersionFacts],
    active: int | None,
    moves: Iterable[PointerMove],
    live_parents: Iterable[int],
    policy: RetentionPolicy,
    now: dt.datetime,
) -> dict[int, str | None]:
    """Each version not pruned yet -> why it is kept, or None where the policy prunes it."""
    rows = {v.number: v for v in versions}
    cutoff = now - dt.timedelta(days=policy.keep_days)
    ancestors: dict[int, int] = {}
    current = rows[active].parent if active in rows else None
    while current is not None and current in rows and len(ancestors) < policy.keep_ancestors:
        ancestors[current] = len(ancestors) + 1
        current = rows[current].parent
    served: set[int] = set()
    for m in moves:
        if m.at >= cutoff:
            served.add(m.to_version)
            if m.from_version is not None:
                served.add(m.from_version)  # active until this move
    parents = set(live_parents)
    out: dict[int, str | None] = {}
    for number, v in sorted(rows.items()):
        if v.status == "pruned":
            continue
        if number == active:
            out[number] = "active"
        elif number in ancestors:
            out[number] = f"ancestor {ancestors[number]} of the active version (keeps {policy.keep_ancestors})"
        elif number in served:
            out[number] = f"active within the last {policy.keep_days:g} days"
        elif v.created_at >= cutoff:
            out[number] = f"created within the last {policy.keep_days:g} days"
        elif number in parents:
            out[number] = "a live job trains from it"
        else:
            out[number] = None
    return out

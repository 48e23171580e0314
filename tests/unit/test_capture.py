"""Captured unknown inputs are bounded in count and age, and deleted once exported (SQLite, the registry)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from service.persistence import registry
from service.persistence.migrations import upgrade
from service.persistence.models import CapturedInput, make_engine, make_sessionmaker


def test_capture_keeps_the_newest_within_count_and_age(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'engram.db'}"
    upgrade(url)
    sessions = make_sessionmaker(make_engine(url))
    with sessions() as s:
        clf = registry.add_classifier(s, "c", {"input": {"kind": "vector", "dim": 2}}, {}, {"capture": True})
        other = registry.add_classifier(s, "d", {"input": {"kind": "vector", "dim": 2}}, {})
        registry.add_captured(s, other.id, 1, [(9.0, b"other")], keep=10, max_age_hours=1)
        registry.add_captured(s, clf.id, 1, [(float(i), bytes([i])) for i in range(5)], keep=3, max_age_hours=1)
        s.commit()
        assert [r.data for r in registry.list_captured(s, clf)] == [b"\x02", b"\x03", b"\x04"]  # the newest three
        old = registry.list_captured(s, clf)[0]
        old.created_at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
        s.commit()
        registry.expire_captured(s, clf.id, max_age_hours=1)
        assert [r.data for r in registry.list_captured(s, clf)] == [b"\x03", b"\x04"]
        last = registry.list_captured(s, clf)[-1].id
        registry.add_captured(s, clf.id, 2, [(7.0, b"late")], keep=3, max_age_hours=1)
        assert registry.delete_captured(s, clf, last) == 2  # exported through ``last``: what came after stays
        s.commit()
        assert [(r.version, r.data) for r in registry.list_captured(s, clf)] == [(2, b"late")]
        assert s.query(CapturedInput).filter_by(classifier_id=other.id).count() == 1  # another classifier's: kept

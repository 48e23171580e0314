from __future__ import annotations

from pathlib import Path

import pytest

from service.http.auth import AuthError, KeyRing
from service.settings import Settings, parse_api_keys

KEYS = {"p-secret": "predict", "l-secret": "learn", "a-secret": "admin"}


def status_of(ring: KeyRing, header: str | None, needed: str) -> int:
    with pytest.raises(AuthError) as info:
        ring.authorise(header, needed)
    return info.value.status


@pytest.mark.parametrize(
    ("key", "allowed"),
    [
        ("p-secret", ["predict"]),
        ("l-secret", ["predict", "learn"]),
        ("a-secret", ["predict", "learn", "admin"]),
    ],
)
def test_roles_are_nested(key: str, allowed: list[str]) -> None:
    ring = KeyRing(KEYS)
    role = KEYS[key]
    for needed in ("predict", "learn", "admin"):
        if needed in allowed:
            assert ring.authorise(f"Bearer {key}", needed).startswith(f"{role}:")
        else:
            assert status_of(ring, f"Bearer {key}", needed) == 403


def test_forbidden_message_names_both_roles() -> None:
    with pytest.raises(AuthError, match=r"'learn'.*'admin'"):
        KeyRing(KEYS).authorise("Bearer l-secret", "admin")


@pytest.mark.parametrize("header", [None, "", "l-secret", "Basic l-secret", "Token l-secret"])
def test_missing_header_or_wrong_scheme_is_401(header: str | None) -> None:
    assert status_of(KeyRing(KEYS), header, "predict") == 401


def test_unknown_key_is_401() -> None:
    ring = KeyRing(KEYS)
    assert status_of(ring, "Bearer nope", "predict") == 401
    assert status_of(ring, "Bearer ", "predict") == 401
    assert status_of(ring, "Bearer a-secretX", "predict") == 401  # prefix of a real key is not enough


def test_actor_never_contains_the_key() -> None:
    ring = KeyRing(KEYS)
    actors = {k: ring.authorise(f"Bearer {k}", "predict") for k in KEYS}
    for key, actor in actors.items():
        assert key not in actor and "secret" not in actor
        assert actor.startswith(KEYS[key] + ":") and len(actor) <= 64  # fits AuditEntry.actor
    assert len(set(actors.values())) == 3  # fingerprints tell keys apart
    assert ring.authorise("Bearer a-secret", "admin") == actors["a-secret"]  # and are stable


def test_insecure_without_keys_acts_as_admin() -> None:
    ring = KeyRing({}, insecure=True)
    assert ring.authorise(None, "admin") == "admin:insecure"


def test_insecure_is_ignored_when_keys_exist() -> None:
    ring = KeyRing(KEYS, insecure=True)
    assert ring.insecure is False
    assert status_of(ring, None, "predict") == 401
    assert status_of(ring, "Bearer p-secret", "admin") == 403


def test_no_keys_and_not_insecure_refuses_everyone() -> None:
    assert status_of(KeyRing({}), "Bearer anything", "predict") == 401


def test_parse_api_keys() -> None:
    assert parse_api_keys(" admin:a1 , learn:l1,predict:p1,") == {"a1": "admin", "l1": "learn", "p1": "predict"}
    assert parse_api_keys("") == {}
    assert parse_api_keys("admin:a:b") == {"a:b": "admin"}  # the key may itself contain ':'


@pytest.mark.parametrize("value", ["admin", "boss:k", ":k", "admin:", "learn:ok,predict"])
def test_malformed_api_keys_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="role:key"):
        parse_api_keys(value)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("DATA_DIR", "DATABASE_URL", "ARTIFACTS_DIR", "API_KEYS", "INSECURE", "MAX_PREDICT_ITEMS"):
        monkeypatch.delenv(f"ENGRAM_{name}", raising=False)
    return monkeypatch


def test_settings_read_engram_variables(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("ENGRAM_DATA_DIR", str(tmp_path))
    clean_env.setenv("ENGRAM_API_KEYS", "admin:a1,predict:p1")
    clean_env.setenv("ENGRAM_INSECURE", "true")
    clean_env.setenv("ENGRAM_MAX_PREDICT_ITEMS", "7")
    s = Settings()
    assert s.data_dir == tmp_path and s.insecure is True and s.max_predict_items == 7
    assert s.keys() == {"a1": "admin", "p1": "predict"}
    assert "a1" not in repr(s)  # keys are never shown


def test_settings_default_db_url_is_sqlite_in_data_dir(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("ENGRAM_DATA_DIR", str(tmp_path))
    s = Settings()
    assert s.db_url == f"sqlite:///{(tmp_path / 'engram.db').resolve()}"
    assert s.artifacts_path == (tmp_path / "artifacts").resolve()
    clean_env.setenv("ENGRAM_DATABASE_URL", "postgresql://db/engram")
    assert Settings().db_url == "postgresql://db/engram"


def test_settings_refuse_malformed_keys(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ENGRAM_API_KEYS", "boss:k")
    with pytest.raises(ValueError, match="role:key"):
        Settings()


def test_non_ascii_keys_and_lowercase_scheme() -> None:
    ring = KeyRing({"abc": "admin"})
    with pytest.raises(AuthError) as err:
        ring.authorise("Bearer \xe9", "predict")
    assert err.value.status == 401
    assert ring.authorise("bearer abc", "admin").startswith("admin:")

"""The server key: refused when weak or malformed, fingerprinted in the store, and a server started
with another key on the same store refuses to start unless told it is rotating. SQLite and
PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_SECRET
from tests.helpers import value_of
from tokentrail import keys
from tokentrail.domain.errors import ConfigurationError, Unauthenticated
from tokentrail.domain.policy import Caller
from tokentrail.service import Service

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "configured, message",
    [
        ("", "empty or blank"),
        (" " * 40, "empty or blank"),
        ("\t\n" * 20, "empty or blank"),
        ("ñ" * 9, "18 bytes long"),
        ("x" * 31, "31 bytes long"),
        ("0123456789abcdef", "16 bytes long"),
        ("\udcff" * 40, "not valid UTF-8"),  # how Python reads a non-UTF-8 environment variable
    ],
)
def test_weak_or_malformed_keys_are_refused(tmp_path: Path, configured: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        keys.server_key(tmp_path, {"TOKENTRAIL_SECRET_KEY": configured})
    assert not (tmp_path / keys.SECRET_FILE).exists()  # an empty variable is not ignored


def test_a_good_key_and_a_generated_key_file_are_accepted(tmp_path: Path) -> None:
    assert keys.server_key(tmp_path, {"TOKENTRAIL_SECRET_KEY": TEST_SECRET}) == TEST_SECRET.encode()
    assert keys.server_key(tmp_path, {"TOKENTRAIL_SECRET_KEY": "ñ" * 16}) == ("ñ" * 16).encode()
    generated = keys.server_key(tmp_path, {})
    assert len(generated) >= keys.MIN_KEY_BYTES
    assert keys.server_key(tmp_path, {}) == generated  # the same file on the next start
    assert (tmp_path / keys.SECRET_FILE).stat().st_mode & 0o777 == 0o600


def test_a_short_or_binary_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / keys.SECRET_FILE).write_bytes(b"short")
    with pytest.raises(ConfigurationError, match="5 bytes long"):
        keys.server_key(tmp_path, {})
    (tmp_path / keys.SECRET_FILE).write_bytes(b"\xff" * 40)
    with pytest.raises(ConfigurationError, match="not valid UTF-8"):
        keys.server_key(tmp_path, {})


def test_a_non_utf8_environment_variable_is_refused_at_start(tmp_path: Path) -> None:
    """End to end: bytes that are not UTF-8 in the environment give a clear message, exit 1."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENTRAIL_DATA_DIR": str(tmp_path)}
    env_bytes = {k.encode(): v.encode() for k, v in env.items()}
    env_bytes[b"TOKENTRAIL_SECRET_KEY"] = b"\xff\xfe" * 20
    result = subprocess.run(
        [sys.executable, "-m", "tokentrail.api.cli", "init", "--quiet"],
        env=env_bytes,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "TOKENTRAIL_SECRET_KEY is not valid UTF-8" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_store_records_the_key_fingerprint_never_the_key(service: Service, database_url: str) -> None:
    fingerprint = keys.fingerprint(TEST_SECRET.encode())
    assert service.key_fingerprint == fingerprint
    assert TEST_SECRET not in fingerprint and len(fingerprint) == 32
    with service.read_engine.connect() as conn:
        rows = conn.execute(keys.s.meta.select()).mappings().all()
    assert [(r["name"], r["value"]) for r in rows] == [("key_fingerprint", fingerprint)]


def test_a_server_with_another_key_refuses_to_start_unless_rotating(
    service: Service, database_url: str, tmp_path: Path, environ
) -> None:
    setup = service.command(lambda: service.ledger.setup_workspace("main", "o@example.com", Caller.system()))
    admin = setup.tokens[0]
    old_value = value_of(service, admin)
    other_key = "another-key-for-the-same-store-0123456789"
    with pytest.raises(ConfigurationError, match="does not match the key this store was set up with"):
        Service(database_url, data=tmp_path, environ={**environ, "TOKENTRAIL_SECRET_KEY": other_key})
    # Same key: fine, any number of times.
    Service(database_url, data=tmp_path, environ=environ).close()
    # Rotation, on purpose: the new fingerprint is recorded, every value changes.
    rotated = Service(
        database_url,
        data=tmp_path,
        environ={**environ, "TOKENTRAIL_SECRET_KEY": other_key, "TOKENTRAIL_ROTATE_KEY": "1"},
    )
    try:
        assert rotated.key_fingerprint == keys.fingerprint(other_key.encode())
        rotated.sync()
        with pytest.raises(Unauthenticated):
            rotated.auth.authenticate(old_value)
        assert rotated.auth.authenticate(value_of(rotated, admin)).token_id == str(admin.id)
    finally:
        rotated.close()
    # Now the old key is the one refused.
    with pytest.raises(ConfigurationError, match="does not match"):
        Service(database_url, data=tmp_path, environ=environ)
    Service(database_url, data=tmp_path, environ={**environ, "TOKENTRAIL_SECRET_KEY": other_key}).close()

"""Keys that live outside the database: the server key that signs token values, and the Ed25519
key that signs audit checkpoints. Each comes from the environment or from a 0600 file in the data
directory, created on first start.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Engine, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from tokentrail.domain.errors import ConfigurationError
from tokentrail.projections import schema as s

SECRET_FILE = "secret.key"
CHECKPOINT_FILE = "checkpoint-ed25519.pem"
MIN_KEY_BYTES = 32  # HMAC-SHA256's own size: a shorter key is a weaker one
FINGERPRINT = "key_fingerprint"  # its row in tt_meta
_FINGERPRINT_MESSAGE = b"tokentrail-key-fingerprint"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def server_key(data_dir: Path, environ: dict[str, str] | None = None) -> bytes:
    """TOKENTRAIL_SECRET_KEY if set (even to ""), else `<data dir>/secret.key` (made on first start).

    Refused, with a message naming the source: fewer than 32 bytes, blank or whitespace only, or
    not UTF-8 (a variable read with surrogate escapes). An empty variable is refused rather than
    ignored: someone meant to set it."""
    env = os.environ if environ is None else environ
    configured = env.get("TOKENTRAIL_SECRET_KEY")
    if configured is not None:
        try:
            key = configured.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigurationError("TOKENTRAIL_SECRET_KEY is not valid UTF-8") from None
        return _checked_key(key, "TOKENTRAIL_SECRET_KEY")
    path = data_dir / SECRET_FILE
    if not path.exists():
        try:
            _write_private(path, base64.urlsafe_b64encode(secrets.token_bytes(32)))
        except FileExistsError:
            pass  # another process created it first
    key = path.read_bytes().strip()
    try:
        key.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigurationError(f"the server key file {path} is not valid UTF-8") from None
    return _checked_key(key, f"the server key file {path}")


def _checked_key(key: bytes, source: str) -> bytes:
    if not key.strip():
        raise ConfigurationError(
            f"{source} is empty or blank: set a random key of at least {MIN_KEY_BYTES} bytes "
            "(e.g. `openssl rand -base64 32`)"
        )
    if len(key) < MIN_KEY_BYTES:
        raise ConfigurationError(
            f"{source} is {len(key)} bytes long: it must be at least {MIN_KEY_BYTES} bytes "
            "(e.g. `openssl rand -base64 32`)"
        )
    return key


def fingerprint(key: bytes) -> str:
    """Names a server key without revealing it: HMAC-SHA256(key, a fixed message), 16 bytes hex.
    Recorded in the store so that a server started with another key is caught at start-up."""
    return hmac.new(key, _FINGERPRINT_MESSAGE, hashlib.sha256).hexdigest()[:32]


def check_fingerprint(engine: Engine, key: bytes, rotate: bool = False) -> str:
    """Record the key's fingerprint on first start; afterwards refuse a different key unless
    `rotate` (then the new fingerprint is recorded). Returns the fingerprint in force.

    Does nothing on a store whose read models are not created yet (a command run with migrate
    off): the next start that migrates records it."""
    mine = fingerprint(key)
    now = int(time.time() * 1_000_000)
    try:
        with engine.begin() as conn:
            recorded = conn.execute(select(s.meta.c.value).where(s.meta.c.name == FINGERPRINT)).scalar()
            if recorded is None:
                # Several servers may start at once on a new store: the first one's key wins and
                # the others compare with it.
                insert = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
                conn.execute(
                    insert(s.meta)
                    .values(name=FINGERPRINT, value=mine, updated_at=now)
                    .on_conflict_do_nothing(index_elements=["name"])
                )
                recorded = conn.execute(select(s.meta.c.value).where(s.meta.c.name == FINGERPRINT)).scalar()
            if hmac.compare_digest(recorded, mine):
                return mine
            if rotate:
                conn.execute(update(s.meta).where(s.meta.c.name == FINGERPRINT).values(value=mine, updated_at=now))
                return mine
    except SQLAlchemyError as error:
        if _missing_table(error):
            return mine
        raise
    raise ConfigurationError(
        f"the server key does not match the key this store was set up with (key fingerprint {mine[:12]}, "
        f"store expects {recorded[:12]}): every server of one store must use the same TOKENTRAIL_SECRET_KEY. "
        "To replace the key on purpose (every token value and JWT changes), stop every server and start one "
        "with TOKENTRAIL_ROTATE_KEY=1 or `tokentrail serve --rotate-key`; see docs/operations.md."
    )


def _missing_table(error: SQLAlchemyError) -> bool:
    text = str(error).lower()
    return "no such table" in text or ("relation" in text and "does not exist" in text)


def checkpoint_key(data_dir: Path, environ: dict[str, str] | None = None) -> Ed25519PrivateKey:
    """TOKENTRAIL_CHECKPOINT_KEY_FILE (PEM), else `<data dir>/checkpoint-ed25519.pem`."""
    env = os.environ if environ is None else environ
    path = Path(env.get("TOKENTRAIL_CHECKPOINT_KEY_FILE") or data_dir / CHECKPOINT_FILE)
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            _write_private(path, pem)
        except FileExistsError:
            pass
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]

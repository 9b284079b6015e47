"""Keys that live outside the database: the server key that signs token values, and the Ed25519
key that signs audit checkpoints. Each comes from the environment or from a 0600 file in the data
directory, created on first start.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SECRET_FILE = "secret.key"
CHECKPOINT_FILE = "checkpoint-ed25519.pem"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def server_key(data_dir: Path, environ: dict[str, str] | None = None) -> bytes:
    """TOKENTRAIL_SECRET_KEY (any string of 16+ bytes), else `<data dir>/secret.key`."""
    env = os.environ if environ is None else environ
    configured = env.get("TOKENTRAIL_SECRET_KEY")
    if configured:
        key = configured.encode()
        if len(key) < 16:
            raise ValueError("TOKENTRAIL_SECRET_KEY must be at least 16 characters")
        return key
    path = data_dir / SECRET_FILE
    if not path.exists():
        try:
            _write_private(path, base64.urlsafe_b64encode(secrets.token_bytes(32)))
        except FileExistsError:
            pass  # another process created it first
    return path.read_bytes().strip()


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
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]

"""The `tokentrail` command: local commands (`main.py`), and the token, audit and deploy commands
that go through the HTTP API (`tokens.py`, `audit.py`, `deploy.py`) with their client and shared
options (`client.py`, `common.py`)."""

from tokentrail.api.cli.main import app, main

__all__ = ["app", "main"]

"""Where the ledger is stored: database settings and engines, the PostgreSQL recorder, migrations."""

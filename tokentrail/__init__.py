"""tokentrail: a token ledger in the model of Tinybird's Auth Tokens, on an append-only event store.

The layers live in the repository's top-level folders (`domain/`, `projections/`, `api/`,
`migrations/`) and install under this one namespace: `tokentrail.domain`, `tokentrail.projections`,
`tokentrail.api`, `tokentrail.migrations`. In a checkout, this folder holds symbolic links to them,
so the code runs (and mypy reads it) under the same names from source as when installed.
"""

from importlib import metadata

try:
    __version__ = metadata.version("tokentrail")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+source"

"""Named refusals of the domain. The API maps each class to one HTTP status in one place."""

from __future__ import annotations


class LedgerError(Exception):
    """Base class: a refusal with a message fit to show a user."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(LedgerError):
    """Malformed input: a bad name, a bad parameter, an oversized value."""


class ScopeError(InvalidInput):
    """A scope string that does not follow the grammar."""


class FilterError(ScopeError):
    """A sql_filter that is not a single boolean expression over columns and literals."""


class NameTaken(LedgerError):
    """Another live token (or workspace) already has this name."""


class Forbidden(LedgerError):
    """The caller is authenticated but not allowed to do this."""

    status = 403


class Unauthenticated(Forbidden):
    """No token, or a token that is not (or no longer) valid."""


class NotFound(LedgerError):
    status = 404


class Conflict(LedgerError):
    """A concurrent change won and the retries did not get through."""

    status = 409


class DeploymentInProgress(Conflict):
    """Another deployment is staged, or was made while this one was planned: nothing was written,
    and the caller may retry once that one is promoted or discarded."""


class ProjectionFailed(LedgerError):
    """The read models could not take a change in: a defect of ours, never the caller's bad input
    (so never a 4xx). A command projected in its own transaction was then not written at all; one
    projected after its commit (a big batch) is committed and not lost."""

    status = 500


class ConfigurationError(LedgerError):
    """The server is set up wrongly (a weak or mismatched key): it refuses to start."""

    status = 500


class MethodNotAllowed(LedgerError):
    status = 405


class DatafileError(InvalidInput):
    """A TOKEN line in a .datasource/.pipe file that does not follow Forward's rules."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line


class StoreUnavailable(LedgerError):
    """The database cannot be reached, or did not answer in time: nothing was changed, and nothing
    is answered from state that may be stale; try again."""

    status = 503
    retry_after = 2

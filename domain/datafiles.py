"""Datafiles: the `TOKEN` lines of a Tinybird project's `.datasource` and `.pipe` files.

Forward's `tb deploy` sends the raw files and the server reads each `TOKEN <name> <PERM>` line as a
token scoped to that file's resource. We read them the way Forward's parser reads them, so that a
project that deploys to Tinybird deploys here with the same tokens:

- Lines split on `\\n`, `\\r\\n` or `\\r`; each is cut into words on whitespace, with `"…"` / `'…'`
  quoting and `#` starting a comment outside quotes (Python's `shlex`, non-POSIX, as Forward).
- `WORD >` opens a block (`SQL >`, `SCHEMA >`, …). The block runs until an unindented line whose
  first word is a command of that kind of file, so an indented `token AS t` inside SQL is SQL, not
  a TOKEN line. Outside a block indentation does not matter, as in Forward.
- The command word is case-insensitive; `TOKEN` takes exactly two arguments; the permission is
  upper-cased and must be READ or APPEND in a `.datasource`, READ in a `.pipe`.
- The resource is the file's stem: `events.datasource` declares tokens on datasource `events`.

Every refusal is a `DatafileError` naming the file and line (line 0: the file as a whole).
"""

from __future__ import annotations

import io
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tokentrail.domain.errors import DatafileError
from tokentrail.domain.names import is_reserved_name
from tokentrail.domain.refs import looks_like_reference
from tokentrail.domain.scopes import RESOURCE_NAME

KIND_BY_SUFFIX = {".datasource": "datasource", ".pipe": "pipe"}
PERMISSIONS_BY_KIND = {"datasource": ("READ", "APPEND"), "pipe": ("READ",)}
SCOPE_FAMILY = {"datasource": "DATASOURCES", "pipe": "PIPES"}
MAX_FILE_BYTES = 1024 * 1024
MAX_FILES = 10_000
MAX_PATH_LENGTH = 1024
# A deployment is one transaction: its size is bounded so that it commits in seconds (10,000 TOKEN
# lines take about 10 s on PostgreSQL), never holding the store for minutes.
MAX_TOKEN_LINES = 10_000
# Mirrors domain.ledger.validate_name (which the ledger applies again), so that a bad name is
# reported with its file and line; importing the ledger here would make a cycle once it plans.
MAX_TOKEN_NAME_LENGTH = 256

# The commands of each kind of file in Forward; only used to see where a `WORD >` block ends.
_SHARED_COMMANDS = {"description", "include", "tags", "token", "version"}
_COMMANDS: dict[str, frozenset[str]] = {
    "datasource": frozenset(
        _SHARED_COMMANDS
        | {"backfill", "engine", "forward_query", "indexes", "partition_key", "primary_key"}
        | {"sampling_key", "schema", "shared_with", "sorting_key", "source", "ttl"}
        | {"export_service", "pg_connection_name", "pg_table"}
        | {"import_bucket_uri", "import_connection_name", "import_export_bucket"}
        | {"import_external_datasource", "import_format", "import_from_timestamp"}
        | {"import_query", "import_schedule", "import_service", "import_strategy"}
        | {"import_table_arn", "kafka_auto_offset_reset", "kafka_connection_name"}
        | {"kafka_group_id", "kafka_key_format", "kafka_store_binary_headers"}
        | {"kafka_store_headers", "kafka_store_raw_value", "kafka_target_partitions"}
        | {"kafka_topic", "kafka_value_format"}
    ),
    "pipe": frozenset(
        _SHARED_COMMANDS
        | {"copy_mode", "copy_schedule", "datasource", "deployment_method", "filter", "mode"}
        | {"node", "on_demand_compute", "scope", "sql", "target_datasource", "type"}
        | {"export_bucket_uri", "export_compression", "export_connection_name"}
        | {"export_file_template", "export_format", "export_kafka_topic", "export_schedule"}
        | {"export_service", "export_strategy", "export_write_strategy"}
    ),
}


@dataclass(frozen=True)
class TokenDeclaration:
    """One TOKEN line: `token_name` may `permission` the `resource_kind` named `resource`."""

    token_name: str
    resource_kind: str  # "datasource" | "pipe"
    resource: str
    permission: str  # "READ" | "APPEND"
    path: str
    line: int

    @property
    def scope(self) -> str:
        """The canonical scope string this line grants, e.g. `DATASOURCES:READ:events`."""
        return f"{SCOPE_FAMILY[self.resource_kind]}:{self.permission}:{self.resource}"

    @property
    def location(self) -> str:
        return f"{self.path}:{self.line}"


def parse_datafile(path: str, text: str) -> list[TokenDeclaration]:
    """The TOKEN lines of one `.datasource` or `.pipe` file, in file order."""
    kind = _kind_of(path)
    resource = _resource_of(path, kind)
    _check_size(path, text)
    declarations: list[TokenDeclaration] = []
    in_block = False
    for number, line in enumerate(io.StringIO(text.removeprefix("\ufeff"), newline=None), 1):
        words = _words(line)
        if words == []:
            continue  # blank or comment-only: neither a command nor part of a block, as Forward
        if in_block:
            if words is None or line.startswith((" ", "\t")) or not _is_command(words[0], kind):
                continue
            in_block = False
        if words is None:
            if line.split()[0].lower() == "token":
                raise DatafileError(path, number, "unterminated quote in TOKEN line")
            continue  # not ours to judge: we read only TOKEN lines
        command, args = words[0].lower(), words[1:]
        if args[:1] == [">"]:
            if command == "token":
                raise DatafileError(path, number, "TOKEN does not take a multi-line block")
            in_block = True
        elif command == "token":
            declarations.append(_declaration(path, number, kind, resource, args))
    return declarations


def parse_project(files: Mapping[str, str]) -> list[TokenDeclaration]:
    """The TOKEN lines of every `.datasource`/`.pipe` in `files` (path → text), by path then line.

    Other files are ignored. Datasources and pipes share one namespace in a workspace, so two
    files whose stems are the same resource name are refused, naming both.
    """
    for path in files:
        _check_path(path)
    paths = sorted(p for p in files if PurePosixPath(p).suffix in KIND_BY_SUFFIX)
    if len(paths) > MAX_FILES:
        raise DatafileError(".", 0, f"more than {MAX_FILES} datafiles")
    owners: dict[str, str] = {}
    declarations: list[TokenDeclaration] = []
    for path in paths:
        resource = _resource_of(path, _kind_of(path))
        if resource in owners:
            raise DatafileError(path, 0, f"resource {resource!r} is already defined in {owners[resource]}")
        owners[resource] = path
        declarations.extend(parse_datafile(path, files[path]))
        if len(declarations) > MAX_TOKEN_LINES:
            extra = declarations[MAX_TOKEN_LINES]
            raise DatafileError(
                extra.path,
                extra.line,
                f"a deployment declares at most {MAX_TOKEN_LINES} TOKEN lines; split the project or remove TOKEN lines",
            )
    return declarations


def read_project(folder: Path) -> dict[str, str]:
    """Every `.datasource`/`.pipe` under `folder`, keyed by relative POSIX path, decoded as UTF-8.

    Sizes are checked before anything is read, so a wrong folder (a home directory, a disk of
    logs) fails fast instead of filling memory.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DatafileError(str(folder), 0, "not a folder")
    found: list[Path] = []
    for file in _datafile_paths(root):
        found.append(file)
        if len(found) > MAX_FILES:
            raise DatafileError(str(folder), 0, f"more than {MAX_FILES} datafiles")
    files: dict[str, str] = {}
    real_root = root.resolve()
    for file in sorted(found):
        relative = file.relative_to(root).as_posix()
        real = file.resolve()
        if not real.is_relative_to(real_root):
            # A link (or a linked folder) leading out of the project: never read or send it.
            raise DatafileError(relative, 0, f"is a link to {real}, outside the project folder {real_root}: refused")
        try:
            if file.stat().st_size > MAX_FILE_BYTES:
                raise DatafileError(relative, 0, f"file is larger than {MAX_FILE_BYTES} bytes")
            data = file.read_bytes()
        except OSError as exc:
            raise DatafileError(relative, 0, f"cannot read file: {exc.strerror}") from None
        try:
            files[relative] = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatafileError(relative, 0, f"not UTF-8 (byte {exc.start})") from None
    return files


def _check_path(path: str) -> None:
    """A project file is named by its path relative to the project folder, in POSIX form, as
    Forward sends it; the paths are recorded with the deployment, so anything else is refused."""
    shown = repr(path)[1:-1]
    if not path or len(path) > MAX_PATH_LENGTH:
        raise DatafileError(shown, 0, f"a file path must have 1 to {MAX_PATH_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in path):
        raise DatafileError(shown, 0, "a file path must not contain control characters or invalid Unicode")
    if "\\" in path or path.startswith("/") or any(part in ("", ".", "..") for part in path.split("/")):
        raise DatafileError(
            shown,
            0,
            "a file path must be relative to the project folder, with / between names and no '.' or '..' parts",
        )


def _datafile_paths(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        if path.suffix in KIND_BY_SUFFIX and path.is_file():
            yield path


def _words(line: str) -> list[str] | None:
    """Forward's split of one line into words; None when a quote is left open."""
    if not any(c in line for c in "\"'\\#"):
        return line.split()  # the same split as shlex here, and what Forward does too
    lexer = shlex.shlex(line)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:
        return None


def _is_command(word: str, kind: str) -> bool:
    word = word.lower()
    return word in _COMMANDS[kind] or (kind == "datasource" and word.startswith("engine_"))


def _declaration(path: str, number: int, kind: str, resource: str, args: list[str]) -> TokenDeclaration:
    if len(args) < 2:
        raise DatafileError(
            path,
            number,
            'TOKEN takes two arguments, a name and a permission: TOKEN "read api token" READ',
        )
    if len(args) > 2:
        hint = f'TOKEN "{" ".join(_unquote(a) for a in args[:-1])}" {args[-1]}'
        raise DatafileError(
            path,
            number,
            f"TOKEN takes two arguments, got {len(args)}; quote a name with spaces: {hint}",
        )
    name = _token_name(path, number, _unquote(args[0]))
    permission = args[1].upper()
    allowed = PERMISSIONS_BY_KIND[kind]
    if permission not in allowed:
        raise DatafileError(
            path,
            number,
            f"Invalid permission {args[1]} for token {name!r}: a .{kind} file grants only {' or '.join(allowed)}",
        )
    return TokenDeclaration(name, kind, resource, permission, path, number)


def _token_name(path: str, number: int, raw: str) -> str:
    name = raw.strip()
    if not name:
        raise DatafileError(path, number, "token name is empty")
    if len(name) > MAX_TOKEN_NAME_LENGTH:
        raise DatafileError(path, number, f"token name is longer than {MAX_TOKEN_NAME_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise DatafileError(path, number, "token name must not contain control characters")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in name):  # a lone surrogate (JSON "\ud800"): not storable
        raise DatafileError(path, number, "token name must be valid Unicode text")
    if looks_like_reference(name):
        raise DatafileError(path, number, "token name must not look like a token id or value")
    if is_reserved_name(name):
        raise DatafileError(
            path,
            number,
            f"token name {name!r} is reserved: datafile tokens cannot take (or imitate) the names of "
            "the default tokens ('admin token', 'create datasource token', 'user token', 'admin <email>')",
        )
    return name


def _unquote(word: str) -> str:
    if len(word) >= 2 and word[0] in "\"'" and word[-1] == word[0]:
        return word[1:-1]
    return word


def _kind_of(path: str) -> str:
    kind = KIND_BY_SUFFIX.get(PurePosixPath(path).suffix)
    if kind is None:
        raise DatafileError(path, 0, "not a .datasource or .pipe file")
    return kind


def _resource_of(path: str, kind: str) -> str:
    resource = PurePosixPath(path).stem
    if not RESOURCE_NAME.fullmatch(resource):
        raise DatafileError(
            path,
            0,
            f"{kind} name {resource!r} must start with a letter or _ and hold only letters, digits and _",
        )
    return resource


def _check_size(path: str, text: str) -> None:
    # A character takes at least one byte, so most texts are judged without encoding them.
    if len(text) > MAX_FILE_BYTES or (
        len(text) * 4 > MAX_FILE_BYTES and len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES
    ):
        raise DatafileError(path, 0, f"file is larger than {MAX_FILE_BYTES} bytes")

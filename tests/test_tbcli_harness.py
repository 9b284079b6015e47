"""Drive Tinybird's real Classic and Forward CLIs against a tiny logging server.

This pins down, per CLI, exactly which requests each token command sends (the
wire facts the tokentrail server has to honour) and checks that the harness in
tests/tbcli.py runs the CLIs without prompts, without PyPI/telemetry calls and
without touching Tinybird Local (port 7181) or any host but the one given.

The CLIs are installed once into ``$TOKENTRAIL_TB_CACHE`` (default
``~/.cache/tokentrail-tb``); the first run needs PyPI (~15 s per CLI with a
warm pip cache, longer from nothing).

Run: ``pytest -q -m e2e tests/test_tbcli_harness.py -s`` (``-s`` prints every
request each command sent, and the CLI's output).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest

from tests import tbcli
from tests.tbcli import CLIS, cli_env, default_cache_dir, ensure_cli, run_tb

pytestmark = pytest.mark.e2e

TOKEN = "p.admin-token"
TOKEN_OBJ = {
    "id": "t1",
    "token": "p.x.y",
    "name": "tok one",
    "description": "",
    "scopes": [{"type": "ADMIN"}],
    "origin": {"type": "C"},
    "host": None,
}
WORKSPACE = {"id": "w1", "name": "ws", "user_email": "a@b.c", "user_id": "u1", "scope": "admin"}
#: ``GET /v0/tokens/<name>`` answers 404 for names starting with this (to see Forward's create path).
MISSING_PREFIX = "missing"
STARTUP_PATHS = ("/v0/workspace", "/v1/workspace", "/v0/regions")


# --------------------------------------------------------------------------- logging server


@dataclass
class Req:
    method: str
    raw: str  # path + "?" + query exactly as on the request line
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.raw).path

    @property
    def query(self) -> str:
        return urlsplit(self.raw).query

    def params(self) -> list[tuple[str, str]]:
        """Query pairs split on ``&`` and the first ``=`` only; values left raw (not unquoted)."""
        out = []
        for part in self.query.split("&"):
            if part:
                k, _, v = part.partition("=")
                out.append((k, v))
        return out

    def param_values(self, name: str) -> list[str]:
        return [v for k, v in self.params() if k == name]

    def header(self, name: str) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None

    def __str__(self) -> str:
        body = f" body={self.body!r} content-type={self.header('Content-Type')!r}" if self.body else ""
        return f"{self.method} {self.raw}{body}"


def default_route(req: Req) -> tuple[int, object]:
    path, m = req.path, req.method
    if m == "GET" and path in ("/v0/workspace", "/v1/workspace"):
        return 200, WORKSPACE
    if m == "GET" and path == "/v0/regions":
        return 200, {"regions": []}
    if path == "/v0/tokens":
        if m == "GET":
            return 200, {"tokens": [TOKEN_OBJ]}
        if m == "POST":
            return 200, TOKEN_OBJ
    if path.startswith("/v0/tokens/"):
        rest = path[len("/v0/tokens/") :]
        if m == "POST" and rest.endswith("/refresh"):
            return 200, TOKEN_OBJ
        if m == "GET":
            if rest.startswith(MISSING_PREFIX):
                return 404, {"error": "Token not found"}
            return 200, TOKEN_OBJ
        if m == "DELETE":
            return 200, {"ok": True}
        if m == "PUT":
            return 200, TOKEN_OBJ
    return 404, {"error": "not found"}


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # the CLI exits with keep-alive sockets open
        pass


@dataclass
class LogServer:
    httpd: ThreadingHTTPServer | None = None
    requests: list[Req] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    overrides: list[tuple[str, str, int, object]] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.httpd is not None
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        assert self.httpd is not None
        return self.httpd.server_address[1]

    def take(self) -> list[Req]:
        with self.lock:
            reqs, self.requests[:] = list(self.requests), []
        return reqs

    @contextlib.contextmanager
    def answering(self, method: str, path: str, status: int, payload: object) -> Iterator[None]:
        """Answer ``method path`` (``path`` may end in ``*`` for a prefix) with ``status`` and JSON ``payload``
        (``None``: no body) while the block runs."""
        entry = (method, path, status, payload)
        with self.lock:
            self.overrides.insert(0, entry)
        try:
            yield
        finally:
            with self.lock:
                self.overrides.remove(entry)

    def route(self, req: Req) -> tuple[int, object]:
        with self.lock:
            overrides = list(self.overrides)
        for method, path, status, payload in overrides:
            if req.method == method and (req.path == path or (path.endswith("*") and req.path.startswith(path[:-1]))):
                return status, payload
        return default_route(req)


def _make_handler(log_server: LogServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def _handle(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            req = Req(self.command, self.path, dict(self.headers.items()), body)
            with log_server.lock:
                log_server.requests.append(req)
            status, payload = log_server.route(req)
            self.send_response(status)
            if status in (204, 304) or payload is None:
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = json.dumps(payload).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    return Handler


@pytest.fixture(scope="module")
def log_server() -> Iterator[LogServer]:
    srv = LogServer()
    srv.httpd = _QuietServer(("127.0.0.1", 0), _make_handler(srv))
    t = threading.Thread(target=srv.httpd.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


# --------------------------------------------------------------------------- network guard

# A sitecustomize that records every socket connect and DNS lookup of the CLI
# process into $TBGUARD_LOG, one JSON line each.
_GUARD = textwrap.dedent(
    """
    import json, os, socket
    _log = os.environ.get("TBGUARD_LOG")
    if _log:
        def _note(kind, target):
            try:
                with open(_log, "a") as fh:
                    fh.write(json.dumps([kind, repr(target)]) + "\\n")
            except Exception:
                pass
        _connect = socket.socket.connect
        _connect_ex = socket.socket.connect_ex
        _gai = socket.getaddrinfo
        def connect(self, address):
            _note("connect", address)
            return _connect(self, address)
        def connect_ex(self, address):
            _note("connect", address)
            return _connect_ex(self, address)
        def getaddrinfo(host, *a, **k):
            _note("dns", host)
            return _gai(host, *a, **k)
        socket.socket.connect = connect
        socket.socket.connect_ex = connect_ex
        socket.getaddrinfo = getaddrinfo
    """
)


@pytest.fixture(scope="module")
def net_guard_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tbguard")
    (d / "sitecustomize.py").write_text(_GUARD)
    return d


def _read_guard(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


# --------------------------------------------------------------------------- the CLIs


@pytest.fixture(scope="module")
def tb_cache_dir() -> Path:
    return default_cache_dir()


@pytest.fixture(scope="module", params=["classic", "forward"])
def tb_cli(request, tb_cache_dir) -> tuple[str, Path]:
    kind = request.param
    started = time.monotonic()
    tb_path = ensure_cli(kind, tb_cache_dir)
    print(f"\n[{kind}] ensure_cli -> {tb_path} ({time.monotonic() - started:.1f}s)")
    return kind, tb_path


@dataclass
class Run:
    kind: str
    proc: subprocess.CompletedProcess
    reqs: list[Req]
    connections: list[list[str]]
    cwd: Path

    @property
    def out(self) -> str:
        return self.proc.stdout + self.proc.stderr

    @property
    def token_reqs(self) -> list[Req]:
        """Requests other than the start-up calls."""
        return [r for r in self.reqs if not (r.method == "GET" and r.path in STARTUP_PATHS)]


@pytest.fixture
def tb_run(log_server, tb_cli, net_guard_dir, tmp_path) -> Callable[..., Run]:
    kind, tb_path = tb_cli
    counter = iter(range(1000))

    def _run(*args: str) -> Run:
        n = next(counter)
        log = tmp_path / f"guard-{n}.log"
        cwd = tmp_path / f"cwd-{n}"
        cwd.mkdir()
        log_server.take()
        proc = run_tb(
            kind,
            tb_path,
            log_server.url,
            TOKEN,
            *args,
            timeout=120,
            cwd=cwd,
            env={"PYTHONPATH": str(net_guard_dir), "TBGUARD_LOG": str(log)},
        )
        run = Run(kind, proc, log_server.take(), _read_guard(log), cwd)
        print(f"\n$ [{kind}] tb {' '.join(args)}  -> exit {proc.returncode}")
        for r in run.reqs:
            print(f"   {r}")
        print(textwrap.indent(run.out.rstrip(), "   | "))
        return run

    return _run


def assert_clean(run: Run, log_server: LogServer, ok: bool = True) -> None:
    """Exit status, the usual start-up calls, auth in the query, no other host contacted, no files written."""
    if ok:
        assert run.proc.returncode == 0, run.out
    startup = [(r.method, r.path) for r in run.reqs if r not in run.token_reqs]
    if run.kind == "classic":
        # once from try_update_config_with_remote, once for the workspace id
        assert startup == [("GET", "/v0/workspace"), ("GET", "/v0/workspace")], run.reqs
    else:
        assert startup == [("GET", "/v1/workspace"), ("GET", "/v0/regions")], run.reqs
    for r in run.reqs:
        assert r.param_values("token") == [TOKEN], r
        [cli_version] = r.param_values("cli_version")
        # "6.5.5" / "5.0.3" on the first call, else e.g. "6.5.5%20%28rev%205a6cd1d%29"
        assert unquote(cli_version).split(" ")[0] == CLIS[run.kind][1], r
        # Forward adds from=cli, except on /v0/regions (sent by a second client object).
        expect_from = ["cli"] if run.kind == "forward" and r.path != "/v0/regions" else []
        assert r.param_values("from") == expect_from, r
        assert r.header("Authorization") is None, r
    assert run.connections, "the network guard (sitecustomize) did not load"
    for what, target in run.connections:
        if what == "dns":
            assert target == "'127.0.0.1'", run.connections
        else:
            assert target == repr(("127.0.0.1", log_server.port)), run.connections
    # nothing written to the working directory (no .tinyb) nor to HOME
    assert sorted(p.name for p in run.cwd.iterdir()) == [".home"], list(run.cwd.iterdir())
    assert list((run.cwd / ".home").rglob("*")) == []


# --------------------------------------------------------------------------- install


def test_install_is_cached(tb_cli, tb_cache_dir):
    kind, tb_path = tb_cli
    dist, version = CLIS[kind]
    venv = tb_cache_dir / f"{kind}-{version}"
    assert tb_path == venv / "bin" / "tb"
    assert (venv / ".tokentrail-installed").read_text() == f"{dist}=={version}\n"
    started = time.monotonic()
    assert ensure_cli(kind, tb_cache_dir) == tb_path
    assert time.monotonic() - started < 10


def test_unknown_kind_is_rejected(tmp_path):
    with pytest.raises(ValueError):
        ensure_cli("nope", tmp_path)  # type: ignore[arg-type]


def test_failed_install_raises_with_pips_output(tmp_path, monkeypatch):
    monkeypatch.setitem(tbcli.CLIS, "classic", ("tinybird-cli", "0.0.0.999"))
    with pytest.raises(RuntimeError) as exc:
        ensure_cli("classic", tmp_path)
    msg = str(exc.value)
    assert "tinybird-cli==0.0.0.999" in msg
    assert "No matching distribution" in msg or "Could not find a version" in msg
    assert not (tmp_path / "classic-0.0.0.999").exists()


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.setenv("TOKENTRAIL_TB_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TOKENTRAIL_TB_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "tokentrail-tb"


# --------------------------------------------------------------------------- the token commands


def test_token_ls(tb_run, log_server):
    run = tb_run("token", "ls")
    assert_clean(run, log_server)
    [r] = run.token_reqs
    assert r.raw.startswith(f"/v0/tokens?token={TOKEN}&cli_version=")
    assert r.method == "GET"
    columns = ["id", "name", "description"] if run.kind == "classic" else ["id", "name", "token"]
    header = next(line for line in run.proc.stdout.splitlines() if "| id" in line)
    assert [c.strip() for c in header.strip("| ").split("|")] == columns
    assert "tok one" in run.out


def test_token_create_static_with_filter(tb_run, log_server):
    run = tb_run(
        "token",
        "create",
        "static",
        "my tok",
        "--scope",
        "DATASOURCES:READ",
        "--resource",
        "events",
        "--filter",
        "a > 1 + 2",
    )
    assert_clean(run, log_server)
    # The scope is appended raw and requests escapes only what is illegal in a URL:
    # spaces -> %20, '>' -> %3E, and the '+' stays a literal '+'.
    scope = "scope=DATASOURCES:READ:events:a%20%3E%201%20+%202"
    if run.kind == "classic":
        [post] = run.token_reqs
        assert post.method == "POST"
        # name/origin come from urlencode (form encoding: space -> '+')
        assert post.raw.startswith(f"/v0/tokens?name=my+tok&origin=C&{scope}&token={TOKEN}&cli_version=")
        written = post
    else:
        # Forward looks the name up first; it exists here, so it replaces the scopes with PUT.
        get, put = run.token_reqs
        assert get.method == "GET" and get.raw.startswith(f"/v0/tokens/my%20tok?token={TOKEN}&")
        assert put.method == "PUT"
        assert put.raw.startswith(f"/v0/tokens/my%20tok?{scope}&token={TOKEN}&cli_version=")
        written = put
    assert written.body == b""
    assert written.header("Content-Length") == "0"
    assert written.header("Content-Type") is None
    # a form parser (parse_qs & co.) would read the '+' as a space: the server must not use one
    raw_scope = written.param_values("scope")[0]
    assert unquote(raw_scope) == "DATASOURCES:READ:events:a > 1 + 2"
    assert dict(parse_qsl(written.query))["scope"] == "DATASOURCES:READ:events:a > 1   2"


def test_token_create_static_new_name(tb_run, log_server):
    """Several scopes; Classic sends the scope's case as typed, Forward upper-cases it."""
    run = tb_run(
        "token",
        "create",
        "static",
        f"{MISSING_PREFIX} tok",
        "--scope",
        "PIPES:READ",
        "--resource",
        "p1",
        "--scope",
        "datasources:append",
        "--resource",
        "ds",
        "--scope",
        "ADMIN",
    )
    assert_clean(run, log_server)
    if run.kind == "classic":
        [post] = run.token_reqs
        scopes = "scope=PIPES:READ:p1&scope=datasources:append:ds&scope=ADMIN"
    else:
        get, post = run.token_reqs  # GET answered 404 -> POST
        assert get.method == "GET" and get.path == "/v0/tokens/missing%20tok"
        scopes = "scope=PIPES:READ:p1&scope=DATASOURCES:APPEND:ds&scope=ADMIN"
    assert post.method == "POST"
    assert post.raw.startswith(f"/v0/tokens?name=missing+tok&origin=C&{scopes}&token={TOKEN}&")
    assert post.body == b"" and post.header("Content-Type") is None


def test_token_create_static_without_scope_sends_empty_param(tb_run, log_server):
    run = tb_run("token", "create", "static", f"{MISSING_PREFIX}")
    assert_clean(run, log_server)
    post = run.token_reqs[-1]
    assert post.raw.startswith(f"/v0/tokens?name={MISSING_PREFIX}&origin=C&&token={TOKEN}&")


def test_token_create_static_long_put_moves_scope_to_body(tb_run, log_server):
    run = tb_run(
        "token",
        "create",
        "static",
        "n",
        "--scope",
        "DATASOURCES:READ",
        "--resource",
        "t",
        "--filter",
        "a = '" + "x" * 4100 + "'",
    )
    assert_clean(run, log_server)
    if run.kind == "classic":
        [post] = run.token_reqs  # Classic never moves it: a >4096-char POST URL
        assert post.method == "POST" and len(post.raw) > 4096
        return
    get, put = run.token_reqs
    assert put.method == "PUT"
    assert put.raw.startswith(f"/v0/tokens/n?token={TOKEN}&")
    assert put.body == ("scope=DATASOURCES:READ:t:a = '" + "x" * 4100 + "'").encode()  # raw, not form-encoded
    assert put.header("Content-Type") is None


def test_token_scopes(tb_run, log_server):
    run = tb_run("token", "scopes", "tok one")
    assert_clean(run, log_server)
    [r] = run.token_reqs
    assert r.method == "GET"
    assert r.raw.startswith(f"/v0/tokens/tok%20one?token={TOKEN}&")
    assert "ADMIN" in run.out


def test_token_refresh(tb_run, log_server):
    run = tb_run("token", "refresh", "tok one", "--yes")
    assert_clean(run, log_server)
    [r] = run.token_reqs
    assert r.method == "POST"
    assert r.raw.startswith(f"/v0/tokens/tok%20one/refresh?token={TOKEN}&")
    assert r.body == b"" and r.header("Content-Length") == "0" and r.header("Content-Type") is None


def test_token_rm(tb_run, log_server):
    run = tb_run("token", "rm", "tok one", "--yes")
    assert_clean(run, log_server)
    [r] = run.token_reqs
    assert r.method == "DELETE"
    assert r.raw.startswith(f"/v0/tokens/tok%20one?token={TOKEN}&")
    assert r.body == b""


def test_token_rm_answered_204(tb_run, log_server):
    with log_server.answering("DELETE", "/v0/tokens/*", 204, None):
        run = tb_run("token", "rm", "x", "--yes")
    assert_clean(run, log_server)
    assert "removed successfully" in run.out


@pytest.mark.parametrize(
    "name, raw_path",
    [
        ("ñu", "/v0/tokens/%C3%B1u?token="),  # UTF-8 percent-encoded
        ("a+b", "/v0/tokens/a+b?token="),  # '+' literal in the path (means '+', not space)
        ("a%20b", "/v0/tokens/a%20b?token="),  # an existing escape is passed through as is
        ("a/b", "/v0/tokens/a/b?token="),  # '/' is not escaped: an extra path segment
        ("a?b", "/v0/tokens/a?b&token="),  # '?' starts the query; token follows with '&'
        ("p.eyJhIjoxfQ.sig", "/v0/tokens/p.eyJhIjoxfQ.sig?token="),  # a token value as the id
    ],
)
def test_names_in_paths(tb_run, log_server, name, raw_path):
    run = tb_run("token", "rm", name, "--yes")
    assert_clean(run, log_server)
    [r] = run.token_reqs
    assert r.method == "DELETE"
    assert r.raw.startswith(raw_path + TOKEN + "&")


def test_hash_in_name_cuts_the_url_and_drops_the_token(tb_run, log_server):
    run = tb_run("token", "rm", "a#b", "--yes")
    assert run.proc.returncode == 0, run.out
    [r] = run.token_reqs
    assert (r.method, r.raw) == ("DELETE", "/v0/tokens/a")  # no ?token=: the server must answer 403


def test_rm_without_yes_aborts_instead_of_hanging(tb_run, log_server):
    run = tb_run("token", "rm", "tok one")
    assert_clean(run, log_server, ok=False)
    assert run.proc.returncode == 1
    assert "Aborted" in run.out
    assert run.token_reqs == []


def test_token_create_jwt(tb_run, log_server):
    before = int(time.time())
    run = tb_run(
        "token",
        "create",
        "jwt",
        "my jwt",
        "--ttl",
        "1h",
        "--scope",
        "PIPES:READ",
        "--resource",
        "top",
        "--fixed-params",
        "k=v",
    )
    after = int(time.time())
    assert_clean(run, log_server)
    [r] = run.token_reqs
    assert r.method == "POST" and r.path == "/v0/tokens"
    params = r.params()
    assert params[0] == ("name", "my+jwt")
    assert params[1][0] == "expiration_time"
    assert before + 3600 <= int(params[1][1]) <= after + 3600
    assert params[2] == ("token", TOKEN)
    assert r.header("Content-Type") is None
    assert json.loads(r.body) == {"scopes": [{"type": "PIPES:READ", "resource": "top", "fixed_params": {"k": "v"}}]}
    assert "The token is: p.x.y" in run.out


def test_token_create_jwt_two_scopes(tb_run, log_server):
    """--fixed-params/--filter are matched to scopes by position; PIPES get fixed_params, DATASOURCES filters."""
    run = tb_run(
        "token",
        "create",
        "jwt",
        "j",
        "--ttl",
        "30min",
        "--scope",
        "PIPES:READ",
        "--resource",
        "top",
        "--fixed-params",
        "k=v,k2=v 2",
        "--scope",
        "DATASOURCES:READ",
        "--resource",
        "ev",
        "--filter",
        "ignored",
        "--filter",
        "a > 1 + 2",
    )
    assert_clean(run, log_server)
    [r] = run.token_reqs
    assert json.loads(r.body) == {
        "scopes": [
            {"type": "PIPES:READ", "resource": "top", "fixed_params": {"k": "v", "k2": "v 2"}},
            {"type": "DATASOURCES:READ", "resource": "ev", "filter": "a > 1 + 2"},
        ]
    }
    assert r.header("Content-Type") is None


def test_jwt_scope_choices(tb_run, log_server):
    run = tb_run("token", "create", "jwt", "j", "--ttl", "1h", "--scope", "ADMIN", "--resource", "x")
    assert run.proc.returncode == 2
    assert "'ADMIN' is not one of 'PIPES:READ', 'DATASOURCES:READ'" in run.out
    assert run.token_reqs == []


def test_help_texts_differ(tb_cli, log_server):
    """(Classic runs its start-up calls even for a sub-command's --help, so it needs the server.)"""
    kind, tb_path = tb_cli
    static = run_tb(kind, tb_path, log_server.url, TOKEN, "token", "create", "static", "--help")
    jwt = run_tb(kind, tb_path, log_server.url, TOKEN, "token", "create", "jwt", "--help")
    assert static.returncode == 0, static.stdout + static.stderr
    assert jwt.returncode == 0, jwt.stdout + jwt.stderr
    for flag in ("--ttl", "--scope", "--resource", "--fixed-params", "--filter"):
        assert flag in jwt.stdout
    if kind == "classic":
        assert "DATASOURCES:READ,DATASOURCES:APPEND" in static.stdout and "--filter" in static.stdout
    else:
        assert "ADMIN,TOKENS,WORKSPACE:READ_ALL" in static.stdout and "--filter" not in static.stdout


# --------------------------------------------------------------------------- responses the CLIs need


def test_workspace_errors_at_startup(tb_run, log_server):
    """Classic aborts every command when /v0/workspace fails (except 403); Forward ignores /v1/workspace."""
    for status in (404, 500):
        with (
            log_server.answering("GET", "/v0/workspace", status, {"error": f"ws {status}"}),
            log_server.answering("GET", "/v1/workspace", status, {"error": f"ws {status}"}),
        ):
            run = tb_run("token", "ls")
        if run.kind == "classic":
            assert run.proc.returncode == 1 and f"ws {status}" in run.out
            assert run.token_reqs == []
        else:
            assert run.proc.returncode == 0 and [r.path for r in run.token_reqs] == ["/v0/tokens"]
    with (
        log_server.answering("GET", "/v0/workspace", 403, {"error": "no"}),
        log_server.answering("GET", "/v1/workspace", 403, {"error": "no"}),
        log_server.answering("GET", "/v0/regions", 404, {"error": "nf"}),
    ):
        run = tb_run("token", "ls")
    assert run.proc.returncode == 0, run.out


def test_ls_hides_entries_without_token_and_needs_tokens_key(tb_run, log_server):
    listing = {"tokens": [{"id": "t9", "name": "no value"}, {"token": "p.only"}]}
    with log_server.answering("GET", "/v0/tokens", 200, listing):
        run = tb_run("token", "ls")
        assert run.proc.returncode == 0, run.out
        assert "no value" not in run.out and "t9" not in run.out
        run = tb_run("token", "ls", "--match", "x")  # --match reads token["name"]
        assert run.proc.returncode == 1 and "'name'" in run.out
    with log_server.answering("GET", "/v0/tokens", 200, {}):
        run = tb_run("token", "ls")
        assert run.proc.returncode == 1 and "'tokens'" in run.out


def test_error_body_needs_error_key(tb_run, log_server):
    with log_server.answering("DELETE", "/v0/tokens/*", 404, {"error": "Token not found"}):
        run = tb_run("token", "rm", "x", "--yes")
    assert run.proc.returncode == 1 and "Token 'x' does not exist" in run.out
    with log_server.answering("DELETE", "/v0/tokens/*", 404, {"detail": "nope"}):
        run = tb_run("token", "rm", "x", "--yes")
    assert run.proc.returncode == 1 and "Object of type Response is not JSON serializable" in run.out
    with log_server.answering("POST", "/v0/tokens", 400, {"error": 'Auth token with name "n" already exists'}):
        run = tb_run("token", "create", "static", f"{MISSING_PREFIX}", "--scope", "ADMIN")
    assert run.proc.returncode == 1 and 'Auth token with name "n" already exists' in run.out


def test_scopes_and_jwt_need_their_keys(tb_run, log_server):
    with log_server.answering("GET", "/v0/tokens/*", 200, {"id": "t1"}):
        run = tb_run("token", "scopes", "x")
    assert run.proc.returncode == 1 and "'scopes'" in run.out
    with log_server.answering("POST", "/v0/tokens", 200, {"id": "t1"}):
        run = tb_run("token", "create", "jwt", "j", "--ttl", "1h", "--scope", "PIPES:READ", "--resource", "r")
    assert run.proc.returncode == 1 and "'token'" in run.out


# --------------------------------------------------------------------------- why run_tb passes --cloud


def test_forward_without_cloud_goes_to_tinybird_local(tb_cli, log_server, net_guard_dir, tmp_path):
    kind, tb_path = tb_cli
    if kind != "forward":
        pytest.skip("Forward only")
    with socket.socket() as s:  # a loopback port nobody listens on stands in for Tinybird Local
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    log = tmp_path / "guard.log"
    home = tmp_path / "home"
    home.mkdir()
    env = cli_env(
        home,
        {
            "TB_HOST": log_server.url,
            "TB_TOKEN": TOKEN,
            "TB_LOCAL_HOST": "127.0.0.1",
            "TB_LOCAL_PORT": str(dead_port),
            "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock",
            "PYTHONPATH": str(net_guard_dir),
            "TBGUARD_LOG": str(log),
        },
    )
    log_server.take()
    proc = subprocess.run(
        [str(tb_path), "token", "ls"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    reqs = log_server.take()
    assert proc.returncode == 1
    assert "container runtime" in proc.stdout + proc.stderr
    assert ["connect", repr(("127.0.0.1", dead_port))] in _read_guard(log)
    assert "/v0/tokens" not in [r.path for r in reqs]

"""Install Tinybird's two real CLIs and run them non-interactively against a host.

Tinybird ships two CLIs that both install a package named ``tinybird`` and a
``tb`` executable, so each lives in its own virtualenv:

* ``classic``: ``tinybird-cli==6.5.5`` (module ``tinybird.tb_cli_modules``).
* ``forward``: ``tinybird==5.0.3`` (module ``tinybird.tb.modules``).

API
---
``default_cache_dir() -> Path``
    ``$TOKENTRAIL_TB_CACHE`` if set, else ``~/.cache/tokentrail-tb``.
``ensure_cli(kind, cache_dir=None) -> Path``
    Creates (once) ``cache_dir/<kind>-<version>`` as a venv holding that CLI and
    returns the path of its ``tb``. A marker file written after a successful
    install (and a quick import check) makes later calls re-use it; a venv
    without a marker, or one that no longer works, is rebuilt. Installs are
    serialised with a file lock, so parallel test workers are safe. pip runs
    with its normal cache. Raises ``RuntimeError`` with pip's output on failure.
``run_tb(kind, tb_path, host, token, *args, timeout=60, env=None, cwd=None)``
    Runs one command and returns the ``subprocess.CompletedProcess`` (text,
    stdout/stderr captured, never raises on a non-zero exit):

    * classic: ``tb --host HOST --token TOKEN --no-version-warning ARGS...``
    * forward: ``TB_HOST=HOST TB_TOKEN=TOKEN tb --cloud ARGS...``

    Both get stdin = /dev/null (a confirmation prompt aborts instead of
    hanging, so pass ``--yes`` to ``rm``/``refresh``), a throw-away cwd and
    HOME (unless ``cwd`` is given; then HOME is ``cwd/.home``), and this
    environment: ``TB_VERSION_WARNING=0`` (no PyPI version check),
    ``TB_CLI_TELEMETRY_OPTOUT=1`` (no telemetry), ``TB_DISABLE_CI_DETECTION=1``
    (the same start-up calls on CI as on a laptop), no ``*_proxy`` variables,
    no inherited ``TB_*``/``PYTHONPATH`` variables, ``COLUMNS=200`` and UTF-8
    stdio. ``env`` adds/overrides variables. A run past ``timeout`` raises
    ``subprocess.TimeoutExpired``.
``tb_command(kind, tb_path, host, token, args) -> (argv, extra_env)`` and
``cli_env(home, extra=None) -> dict``
    The pieces ``run_tb`` uses, for callers that need ``subprocess.Popen``.
``CLIS``
    ``{"classic": ("tinybird-cli", "6.5.5"), "forward": ("tinybird", "5.0.3")}``.

Installing
----------
``pip install tinybird-cli==6.5.5`` works as is (9-15 s). ``pip install
tinybird==5.0.3`` does NOT resolve on this machine's index: the wheel requires
``certifi>=2026.10.19`` and the newest certifi served is 2026.10.18.
``ensure_cli`` therefore tries the plain install first and, when that fails,
downloads the wheel with ``--no-deps``, installs every ``Requires-Dist`` of its
METADATA except ``certifi`` (requests still pulls in the newest certifi
available), then installs the wheel with ``--no-deps`` (about 20 s in all;
``pip check`` then reports only the certifi pin). Measured with an empty pip
cache: classic 14.8 s, forward 21.4 s; re-use of a marked venv: ~0.05 s.
The venv is made with ``sys.executable -m venv``; Forward needs Python >=3.11,<3.14.

Start-up behaviour (observed; asserted in tests/test_tbcli_harness.py)
----------------------------------------------------------------------
Every request carries ``?token=<TOKEN>`` (raw) and ``cli_version=``; none has an
``Authorization`` header.

* Classic, with ``--host``/``--token``: ``GET /v0/workspace`` twice before every
  command, even before a sub-command's ``--help`` (first with
  ``cli_version=6.5.5``, then ``cli_version=6.5.5%20%28rev%205a6cd1d%29``, the
  value every later request carries). A 404 or 500 there aborts the command
  with the ``error`` text; 403 and ``{}`` are fine. The PyPI version check
  (``GET https://pypi.org/pypi/tinybird-cli/json``) is skipped whenever
  ``--token`` is a flag; ``--no-version-warning`` makes that explicit. Nothing
  is written to cwd or HOME.
* Forward, with ``--cloud`` and TB_HOST/TB_TOKEN in the environment:
  ``GET /v1/workspace`` (``cli_version=5.0.3%20%28rev%20ef090149%29&from=cli``;
  any status is fine) then ``GET /v0/regions`` (``cli_version=5.0.3``, no
  ``from``; any status is fine; skipped when a CI is detected, hence
  ``TB_DISABLE_CI_DETECTION=1``). All later requests end in
  ``&cli_version=5.0.3%20%28rev%20ef090149%29&from=cli``. Without
  ``TB_VERSION_WARNING=0`` (or ``--token`` as a flag) it would first ask PyPI.
  It writes no ``.tinyb`` in this mode. With ``--host``/``--token`` as flags
  instead it calls ``GET /v1/workspace`` twice and writes ``./.tinyb`` (host,
  token, workspace id/name, user) into the cwd (``try_update_config_with_remote``
  with ``auto_persist=True``), which is why ``run_tb`` uses the environment. If ``/v0/regions`` lists a region matching the
  host it writes ``$HOME/.tinybird/<provider>/<region>/<workspace>/sessions.txt``
  and, once another folder is tracked there, prompts "Running command from an
  untracked folder"; a fresh HOME per run plus ``{"regions": []}`` avoid both.
  Without ``--cloud`` the token commands go to Tinybird Local
  (``http://localhost:7181``, then the Docker socket) and fail with "No
  container runtime is running"; a refused connection to TB_HOST is retried 10
  times first.

Command differences between the CLIs (token commands)
-----------------------------------------------------
* ``token ls [--match X]``: Classic prints columns id, name, description;
  Forward prints id, name, token. Both drop entries that have no ``token`` key;
  ``--match`` filters client-side on ``name`` (a KeyError without it).
* ``token create static NAME --scope S [--resource R] [--filter F]`` (repeatable
  groups, parsed by hand from the extra args, so ``--help`` is hand-written):
  Classic's help lists DATASOURCES:*/PIPES:* scopes and ``--filter``; Forward's
  help lists ADMIN, TOKENS, WORKSPACE:READ_ALL, WORKSPACE:DEPLOY,
  ORG_DATASOURCES:READ and omits ``--filter``, but it still accepts
  ``--resource``/``--filter`` and any scope: neither CLI validates the scope.
  Classic sends the scope as typed; Forward upper-cases it. Classic sends one
  ``POST /v0/tokens?name=..&origin=C&scope=..``; Forward first
  ``GET /v0/tokens/NAME`` and then ``PUT /v0/tokens/NAME?scope=..`` if that
  answered 2xx or ``POST /v0/tokens?name=..`` if it failed (any error).
* ``token create jwt NAME --ttl 1h --scope PIPES:READ|DATASOURCES:READ
  --resource R [--fixed-params k=v[,k2=v2]] [--filter SQL]``: identical in both
  (``--scope`` is a click Choice of those two; exit 2 otherwise).
* ``token scopes X``, ``token copy X``, ``token refresh X [--yes]``,
  ``token rm X [--yes]``: identical in both (``copy`` needs a clipboard).
  Without ``--yes`` and with stdin empty, ``rm``/``refresh`` print "Aborted!"
  and exit 1 before sending anything.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

Kind = Literal["classic", "forward"]

#: kind -> (PyPI distribution, pinned version)
CLIS: dict[str, tuple[str, str]] = {
    "classic": ("tinybird-cli", "6.5.5"),
    "forward": ("tinybird", "5.0.3"),
}

#: Requirements left out when installing the Forward wheel's dependencies by hand.
_SKIPPED_FORWARD_DEPS = {"certifi"}

_MARKER = ".tokentrail-installed"
_PIP_TIMEOUT = 900  # seconds for one pip invocation
_NOISE = re.compile(r"^WARNING: Location '.*' is ignored: it is neither a file nor a directory\.$")


def default_cache_dir() -> Path:
    """``$TOKENTRAIL_TB_CACHE`` if set and non-empty, else ``~/.cache/tokentrail-tb``."""
    env = os.environ.get("TOKENTRAIL_TB_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "tokentrail-tb"


def _spec(kind: str) -> tuple[str, str]:
    try:
        return CLIS[kind]
    except KeyError:
        raise ValueError(f"unknown Tinybird CLI kind {kind!r}; expected one of {sorted(CLIS)}") from None


def _bin_dir(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin")


def _venv_python(venv: Path) -> Path:
    return _bin_dir(venv) / ("python.exe" if os.name == "nt" else "python")


def _tb_path(venv: Path) -> Path:
    return _bin_dir(venv) / ("tb.exe" if os.name == "nt" else "tb")


def _clean_pip_output(text: str) -> str:
    lines = text.splitlines()
    kept = [line for line in lines if not _NOISE.match(line)]
    dropped = len(lines) - len(kept)
    if dropped:
        kept.append(f"[{dropped} 'WARNING: Location ... is ignored' lines omitted]")
    out = "\n".join(kept)
    if len(out) > 20000:
        out = "[... output truncated ...]\n" + out[-20000:]
    return out


def _pip(venv: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(_venv_python(venv)), "-m", "pip", *args]
    env = dict(os.environ)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.pop("PIP_NO_CACHE_DIR", None)
    env.pop("PYTHONPATH", None)
    try:
        return subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            timeout=_PIP_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else (exc.output or "")
        return subprocess.CompletedProcess(cmd, -1, out + f"\n[pip timed out after {_PIP_TIMEOUT}s]", None)


def _fail(what: str, proc: subprocess.CompletedProcess, *earlier: subprocess.CompletedProcess) -> RuntimeError:
    parts = [what]
    for p in (*earlier, proc):
        parts.append(f"$ {' '.join(map(str, p.args))}\n(exit {p.returncode})\n{_clean_pip_output(p.stdout or '')}")
    return RuntimeError("\n\n".join(parts))


def _requires_dist(wheel: Path) -> list[str]:
    """``Requires-Dist`` lines of a wheel's METADATA (extras-only ones left out)."""
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = zf.read(meta_name).decode("utf-8")
    reqs = []
    for line in meta.splitlines():
        if not line.strip():
            break  # end of headers, the long description follows
        if line.startswith("Requires-Dist:"):
            req = line.split(":", 1)[1].strip()
            marker = req.split(";", 1)[1] if ";" in req else ""
            if "extra" in marker:
                continue
            reqs.append(req)
    return reqs


def _req_name(req: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    return re.sub(r"[-_.]+", "-", m.group(1)).lower() if m else ""


def _install_forward_by_hand(venv: Path, dist: str, version: str, plain: subprocess.CompletedProcess) -> None:
    with tempfile.TemporaryDirectory(prefix="tb-wheel-") as tmp:
        dl = _pip(venv, "download", "--no-deps", "--only-binary=:all:", "-d", tmp, f"{dist}=={version}")
        if dl.returncode != 0:
            raise _fail(f"could not download {dist}=={version}", dl, plain)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise _fail(f"pip download produced no wheel for {dist}=={version}", dl, plain)
        wheel = wheels[0]
        reqs = [r for r in _requires_dist(wheel) if _req_name(r) not in _SKIPPED_FORWARD_DEPS]
        deps = _pip(venv, "install", *reqs)
        if deps.returncode != 0:
            raise _fail(f"could not install the dependencies of {dist}=={version}", deps, plain)
        whl = _pip(venv, "install", "--no-deps", str(wheel))
        if whl.returncode != 0:
            raise _fail(f"could not install {wheel.name} with --no-deps", whl, plain)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _marker_text(dist: str, version: str) -> str:
    return f"{dist}=={version}\n"


def _works(venv: Path, dist: str, version: str) -> bool:
    marker = venv / _MARKER
    tb = _tb_path(venv)
    if not marker.is_file() or not tb.is_file():
        return False
    if marker.read_text() != _marker_text(dist, version):
        return False
    try:
        proc = subprocess.run(
            [
                str(_venv_python(venv)),
                "-c",
                "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))",
                dist,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and proc.stdout.strip() == version


def ensure_cli(kind: Kind, cache_dir: Path | None = None) -> Path:
    """Return the ``tb`` of a venv holding the pinned CLI of ``kind``, installing it once."""
    dist, version = _spec(kind)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    venv = cache_dir / f"{kind}-{version}"
    if _works(venv, dist, version):
        return _tb_path(venv)

    with _locked(cache_dir / f".{kind}-{version}.lock"):
        if _works(venv, dist, version):  # another process finished it meanwhile
            return _tb_path(venv)
        if venv.exists():
            shutil.rmtree(venv)
        try:
            subprocess.run(
                [sys.executable, "-m", "venv", str(venv)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=True,
                timeout=300,
            )
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(
                f"could not create a venv at {venv} with {sys.executable}:\n{exc.stdout}\n{exc.stderr}"
            ) from exc

        started = time.monotonic()
        plain = _pip(venv, "install", f"{dist}=={version}")
        if plain.returncode != 0:
            if kind != "forward":
                shutil.rmtree(venv, ignore_errors=True)
                raise _fail(f"pip could not install {dist}=={version} into {venv}", plain)
            try:
                _install_forward_by_hand(venv, dist, version, plain)
            except RuntimeError:
                shutil.rmtree(venv, ignore_errors=True)
                raise

        tb = _tb_path(venv)
        if not tb.is_file():
            shutil.rmtree(venv, ignore_errors=True)
            raise RuntimeError(f"{dist}=={version} installed into {venv} but {tb} is missing")
        (venv / _MARKER).write_text(_marker_text(dist, version))
        if not _works(venv, dist, version):
            shutil.rmtree(venv, ignore_errors=True)
            raise RuntimeError(f"{dist}=={version} installed into {venv} but does not import")
        (venv / ".tokentrail-install-seconds").write_text(f"{time.monotonic() - started:.1f}\n")
        return tb


_STRIPPED_ENV = re.compile(r"^(TB_.*|TINYBIRD_.*|.*_proxy|.*_PROXY|PYTHONPATH|PYTHONHOME|VIRTUAL_ENV)$")


def cli_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment ``run_tb`` gives the CLI (before kind-specific TB_HOST/TB_TOKEN)."""
    env = {k: v for k, v in os.environ.items() if not _STRIPPED_ENV.match(k)}
    env.update(
        {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "TB_VERSION_WARNING": "0",
            "TB_CLI_TELEMETRY_OPTOUT": "1",
            "TB_DISABLE_CI_DETECTION": "1",
            "NO_PROXY": "*",
            "no_proxy": "*",
            "COLUMNS": "200",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONUTF8": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    if extra:
        env.update(extra)
    return env


def tb_command(
    kind: Kind, tb_path: Path, host: str, token: str, args: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """The argv and the extra environment variables for one CLI call."""
    _spec(kind)
    if kind == "classic":
        return [str(tb_path), "--host", host, "--token", token, "--no-version-warning", *args], {}
    return [str(tb_path), "--cloud", *args], {"TB_HOST": host, "TB_TOKEN": token}


def run_tb(
    kind: Kind,
    tb_path: Path,
    host: str,
    token: str,
    *args: str,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run ``tb ARGS`` of ``kind`` against ``host`` with ``token``; stdin is empty."""
    argv, kind_env = tb_command(kind, tb_path, host, token, args)
    with contextlib.ExitStack() as stack:
        if cwd is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"tb-{kind}-")))
            home = workdir / ".home"
        else:
            workdir = Path(cwd)
            home = workdir / ".home"
        home.mkdir(parents=True, exist_ok=True)
        full_env = cli_env(home)
        full_env.update(kind_env)
        if env:
            full_env.update(env)
        return subprocess.run(
            argv,
            cwd=workdir,
            env=full_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
        )

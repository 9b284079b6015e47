"""Every command the README and docs/ show runs, so the documentation cannot go stale.

Convention: a code block tagged ```bash is run; any other (```console, ```text, ```sh) is shown
only, for commands that need what a test does not have (a PostgreSQL host, a service manager, a
benchmark's minutes).

Each Markdown file runs top to bottom as one bash script (`set -euo pipefail`, so a failing command
fails the test and names itself) in a sandbox of its own: a fresh working directory whose
`./tokentrail-data` is served by a live `tokentrail serve` on a free port, started from this
checkout with no TOKENTRAIL_SECRET_KEY (the key file is made as on a first run). The script sees:

- `tokentrail` on PATH: this checkout's CLI; `tokentrail serve` does nothing (the sandbox's server
  already serves that data directory);
- `http://127.0.0.1:8000` rewritten to the sandbox server's address;
- `TOKENTRAIL_HOST`, and `TOKENTRAIL_TOKEN` and `T` holding the workspace's admin token;
- `tb`: Tinybird's Classic CLI (tinybird-cli 6.5.5) or, for `tb --cloud …`, Forward (tinybird
  5.0.3), installed by tests/tbcli.py into its cache (a one-off ~35 s the first time, then reused).
  When they cannot be installed (no package index), the `tb` lines are skipped and reported.

The README's first block, the two install commands, is checked textually instead of re-installing
the package: it must come first, unchanged, and match pyproject.toml and .ci/run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import tbcli
from tests.test_cli import REPO, Server, start_server, stop_server

pytestmark = pytest.mark.e2e

DOCUMENTED_HOST = "http://127.0.0.1:8000"
INSTALL_BLOCK = """\
# Install and serve on the embedded SQLite default (prints the admin token on first start):
python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/tokentrail serve

# Install and run the tests (needs PostgreSQL on 127.0.0.1:5432; CI runs exactly this via .ci/run):
python3 -m venv .venv && .venv/bin/pip install '.[test]' && .venv/bin/python -m pytest -q -n 2
"""
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

PRELUDE = r"""
set -euo pipefail
trap 'echo "docs sandbox: command failed with exit $?: $BASH_COMMAND" >&2' ERR
tokentrail() {
  if [ "${1:-}" = serve ]; then echo "(sandbox: already served at $TOKENTRAIL_HOST)"; return 0; fi
  local status=0
  command tokentrail "$@" || status=$?
  if [ "$status" -ne 0 ]; then echo "docs sandbox: 'tokentrail $*' exited $status" >&2; fi
  return "$status"
}
tb() {
  local exe="$TB_CLASSIC"
  if [ "${1:-}" = --cloud ]; then exe="$TB_FORWARD"; fi
  if [ -z "$exe" ]; then echo "tb $*" >> "$TB_SKIPPED"; return 0; fi
  local status=0
  "$exe" "$@" || status=$?
  if [ "$status" -ne 0 ]; then echo "docs sandbox: 'tb $*' exited $status" >&2; fi
  return "$status"
}
"""


@dataclass
class Block:
    path: Path
    line: int
    language: str
    text: str


def code_blocks(path: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    opening = None
    for number, line in enumerate(lines, 1):
        fence = re.match(r"^```(\w*)\s*$", line)
        if fence and opening is None:
            opening = (number, fence.group(1), [])
        elif line.rstrip() == "```" and opening is not None:
            blocks.append(Block(path, opening[0], opening[1], "".join(opening[2])))
            opening = None
        elif opening is not None:
            opening[2].append(line)
    assert opening is None, f"{path}:{opening[0]}: unclosed code block"
    return blocks


def runnable(path: Path) -> list[Block]:
    blocks = [b for b in code_blocks(path) if b.language == "bash"]
    return blocks[1:] if path.name == "README.md" else blocks  # the install block is checked textually


# -- the sandbox ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tinybird_clis() -> dict[str, str]:
    """Paths of the two `tb`s, or "" for one that cannot be installed here."""
    found = {}
    for kind in ("classic", "forward"):
        try:
            found[kind] = str(tbcli.ensure_cli(kind))  # type: ignore[arg-type]
        except (RuntimeError, OSError, subprocess.SubprocessError):
            found[kind] = ""
    return found


@dataclass
class Run:
    server: Server
    result: subprocess.CompletedProcess
    skipped_tb: str  # the `tb` lines not run because the CLIs could not be installed


def run_doc(path: Path, root: Path, tinybird_clis: dict[str, str]) -> Run:
    """A sandbox for one documentation file: its own server, its script run to the end."""
    server = start_server(root / "tokentrail-data", secret=False)
    try:
        skipped = root / "tb-skipped.txt"
        (root / ".home").mkdir(exist_ok=True)
        env = tbcli.cli_env(
            root / ".home",
            {
                "PATH": f"{shim_dir(root)}:{os.environ.get('PATH', '')}",
                "TOKENTRAIL_DATA_DIR": str(server.data_dir),
                "TOKENTRAIL_HOST": server.url,
                "TOKENTRAIL_TOKEN": server.admin,
                "T": server.admin,
                "TB_CLASSIC": tinybird_clis["classic"],
                "TB_FORWARD": tinybird_clis["forward"],
                "TB_SKIPPED": str(skipped),
                "COLUMNS": "160",
            },
        )
        result = subprocess.run(
            ["bash", "-c", script_for(path, server.url)],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            stdin=subprocess.DEVNULL,
        )
        return Run(server, result, skipped.read_text() if skipped.exists() else "")
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def doc_runs(tmp_path_factory: pytest.TempPathFactory, tinybird_clis: dict[str, str]) -> dict[Path, Run]:
    """Every documentation file run in its own sandbox, the files side by side (they share nothing)."""
    files = [p for p in DOCS if runnable(p)]
    roots = {p: tmp_path_factory.mktemp(p.stem.lower()) for p in files}
    with ThreadPoolExecutor(max_workers=max(len(files), 1)) as pool:
        runs = pool.map(lambda p: run_doc(p, roots[p], tinybird_clis), files)
        return dict(zip(files, runs))


def shim_dir(root: Path) -> Path:
    """A `tokentrail` executable running this checkout's CLI with the test's Python."""
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "tokentrail"
    shim.write_text(f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{sys.executable}" -m tokentrail.api.cli "$@"\n')
    shim.chmod(0o755)
    return bin_dir


def script_for(path: Path, url: str) -> str:
    parts = [PRELUDE]
    for block in runnable(path):
        parts.append(f'echo "### {path.relative_to(REPO)}:{block.line}"\n')
        parts.append(block.text.replace(DOCUMENTED_HOST, url))
    return "".join(parts)


# -- tests ----------------------------------------------------------------------------------------


def test_readme_opens_with_the_two_install_commands() -> None:
    blocks = code_blocks(REPO / "README.md")
    assert blocks[0].language == "bash" and blocks[0].text == INSTALL_BLOCK
    readme = (REPO / "README.md").read_text()
    assert readme.index("```bash") == readme.index("```"), "no code block may come before the install block"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'tokentrail = "tokentrail.api.cli:main"' in pyproject  # `.venv/bin/tokentrail` exists after `pip install .`
    assert re.search(r"^test = \[", pyproject, re.M)  # the '.[test]' extra
    test_command = INSTALL_BLOCK.strip().splitlines()[-1]
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines, ".ci/run must run the README's test command verbatim"


@pytest.mark.parametrize("path", [p for p in DOCS if runnable(p)], ids=lambda p: str(p.relative_to(REPO)))
def test_every_bash_block_runs(path: Path, doc_runs: dict[Path, Run], tinybird_clis: dict[str, str]) -> None:
    run = doc_runs[path]
    assert run.result.returncode == 0, (
        f"{path.relative_to(REPO)}: a documented command failed\n--- stdout (tail)\n{run.result.stdout[-4000:]}"
        f"\n--- stderr (tail)\n{run.result.stderr[-4000:]}"
    )
    assert "Traceback" not in run.result.stderr
    blocks = runnable(path)
    assert run.result.stdout.count("### ") >= len(blocks)  # every block was reached
    if all(tinybird_clis.values()):
        assert not run.skipped_tb
    elif run.skipped_tb:
        print(f"Tinybird's CLIs are not installable here; not run:\n{run.skipped_tb}")


def test_cli_md_shows_the_help_example_of_every_command() -> None:
    from typer.main import get_command

    from tokentrail.api.cli import app

    shown = "".join(b.text for b in code_blocks(REPO / "docs" / "cli.md") if b.language == "bash")
    missing = []

    def walk(command, path):  # noqa: ANN001, ANN202
        for example in re.findall(r"Example: \[bold\](.*?)\[/\]", command.help or ""):
            if example not in shown:
                missing.append(f"tokentrail {' '.join(path)}: {example}")
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(get_command(app), [])
    assert not missing, "docs/cli.md lacks these --help examples:\n" + "\n".join(missing)


def test_api_reference_documents_every_route_of_the_schema() -> None:
    sys.path.insert(0, str(REPO / "docs"))
    import generate_api_reference as generator

    schema = generator.openapi()
    routes = {
        f"{method.upper()} {path}"
        for path, item in schema["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch")
    }
    documented = set(re.findall(r"^### (\S+ \S+)$", (REPO / "docs" / "api.md").read_text(), re.M))
    assert routes == documented, (
        f"docs/api.md is stale (run python docs/generate_api_reference.py): "
        f"missing {sorted(routes - documented)}, gone {sorted(documented - routes)}"
    )
    assert routes >= {
        "GET /v0/tokens",
        "POST /v0/tokens",
        "GET /v0/audit",
        "GET /v0/access/diff",
        "POST /v0/deployments",
        "GET /v0/audit/checkpoint",
    }

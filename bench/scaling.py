"""Scaling: the headline figures of the other benchmarks against ledger size, as JSON, Markdown and a plot.

Two ways to feed it:

- `--from-json A.json B.json ...` only reads results the other scripts wrote with `--json PATH`
  (the layout of `bench/common.py` `Results.write_json`) and plots them: run each benchmark on a
  quiet machine, then plot. A file's ledger size is taken from, in order: `FILE@SIZE` on the
  command line; a row's own `size` or `events` field; the row's name ("... 100,000 events");
  the figure's own rule (`GET /v0/tokens (10,000+ tokens)` is a ledger of ~2 events per token);
  the results' title ("... 1,000,000 events"); one "N events" count in the notes. A size is put
  in the column of the nearest of `--sizes` (within 2x); where two files give the same figure,
  backend and size, the file named last wins in the table and the plot.
- without `--from-json`, it runs the scripts itself for each size of `--sizes` and each backend
  (as subprocesses, each writing `--json` into `--out DIR`), then reads what they wrote the same
  way. A script is run at a size only when its `--help` offers the flag that sets that size
  (`compliance --events`, `projection --events`, `export --events`, `latency --tokens`);
  `ledger_writes` has no ledger size and is run once, shown at the smallest size.

Every figure becomes a record (figure, backend, size, value, unit, source); the JSON holds the
records, the Markdown table has one row per figure and backend and one column per size, and the
PNG (matplotlib: `pip install -e '.[bench]'`) draws each figure against ledger size on log-x axes.

    python -m bench.scaling --from-json results/*.json [--png docs/scaling.png] [--md out.md] [--json out.json]
    python -m bench.scaling --sizes 10000,100000,1000000 --backend both --out bench-results/
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)


@dataclass(frozen=True)
class Record:
    figure: str
    backend: str
    size: int  # the ledger size it is plotted at (the nearest of --sizes, within 2x)
    value: float
    unit: str
    source: str  # file and row it came from
    events: int  # the ledger size measured


@dataclass(frozen=True)
class Figure:
    """A headline figure: which rows carry it and which of their numbers is the figure."""

    name: str
    unit: str
    pattern: str  # regex on the row's `benchmark`
    take: str = "ours"  # "ours", "baseline" or "ratio"
    baseline: str | None = None  # regex the row's baseline_name must match
    row_unit: str | None = None  # the row's unit must be this one
    size_rule: Callable[[str], int | None] | None = None  # the ledger size from the row's name
    higher_is_better: bool = True

    def value(self, row: dict[str, Any]) -> float | None:
        if not re.search(self.pattern, row.get("benchmark", "")):
            return None
        if self.row_unit is not None and row.get("unit") != self.row_unit:
            return None
        if self.baseline is not None and not re.search(self.baseline, row.get("baseline_name") or ""):
            return None
        value = row.get(self.take)
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _count(text: str) -> int:
    return int(text.replace(",", "").replace("_", ""))


def _tokens_ledger(name: str) -> int | None:
    """`GET /v0/tokens (10,000+ tokens)`: seeded tokens are 2 events each (Token + TokenName)."""
    found = re.search(r"\(([\d,]+)\+? tokens\)", name)
    return 2 * _count(found.group(1)) if found else None


FIGURES: tuple[Figure, ...] = (
    Figure("projection catch-up", "events/s", r"^catch_up from zero|^projection catch-up", baseline=r"decode|^$"),
    Figure("rebuild(verify=True)", "events/s", r"^rebuild"),
    Figure("decode-only replay", "events/s", r"^catch_up from zero", take="baseline", baseline=r"decode-only"),
    Figure("as-of p99 (typical workspace)", "ms", r"^GET /v0/tokens\?as_of= p99, typical", higher_is_better=False),
    Figure("access p99 (typical workspace)", "ms", r"^GET /v0/access p99, typical", higher_is_better=False),
    Figure("verify_chain", "events/s", r"^verify_chain"),
    Figure("export", "events/s", r"export", row_unit="events/s"),
    Figure("export peak RSS", "MB", r"export.*RSS", row_unit="MB", higher_is_better=False),
    Figure(
        "service.command(create_token) / raw save",
        "x",
        r"^create: service\.command\(create_token\)",
        take="ratio",
    ),
    Figure(
        "GET /v0/tokens p50",
        "ms",
        r"^GET /v0/tokens \(.*tokens\) p50",
        size_rule=_tokens_ledger,
        higher_is_better=False,
    ),
    Figure("database size", "B/event", r"^database size per event", higher_is_better=False),
)

_EVENTS = re.compile(r"(\d{1,3}(?:,\d{3})+|\d{4,}) events")  # 1,000 or more: not "2 events each"


def _size_in(text: str) -> int | None:
    found = _EVENTS.search(text)
    return _count(found.group(1)) if found else None


def snap(size: int, sizes: Sequence[int]) -> int:
    """The nearest of `sizes` (on a log scale) when within a factor 2, else `size` itself: a
    projection run of 9,111 events belongs in the 10k column."""
    if not sizes:
        return size
    nearest = min(sizes, key=lambda s: abs(math.log(s / size)))
    return nearest if abs(math.log(nearest / size)) <= math.log(2) else size


def records_from(path: str, override: int | None = None, sizes: Sequence[int] = ()) -> list[Record]:
    """The records of one `--json` file of any benchmark (rows no figure claims are skipped)."""
    payload = json.loads(Path(path).read_text())
    title_size = _size_in(payload.get("title", ""))
    notes = payload.get("notes", [])
    out: list[Record] = []
    seen: set[tuple[str, str, int]] = set()
    for row in payload.get("rows", []):
        for figure in FIGURES:
            value = figure.value(row)
            if value is None:
                continue
            size = (
                override
                or row.get("size")
                or row.get("events")
                or _size_in(row["benchmark"])
                or (figure.size_rule(row["benchmark"]) if figure.size_rule else None)
                or title_size
                or _note_size(notes, row["backend"])
            )
            if not size:
                print(f"warning: {path}: no ledger size for {row['benchmark']!r}; pass {path}@SIZE", file=sys.stderr)
                continue
            key = (figure.name, row["backend"], snap(int(size), sizes))
            if key in seen:  # the same figure against another baseline (projection prints two)
                continue
            seen.add(key)
            source = f"{path}: {row['benchmark']}"
            out.append(Record(figure.name, row["backend"], key[2], value, figure.unit, source, int(size)))
    return out


def _note_size(notes: Sequence[str], backend: str) -> int | None:
    """The one "N events" count in the notes about `backend` ("sqlite: 9,601 events; ..."), or in
    all the notes when none names it; None when there is none or more than one."""
    for chosen in ([n for n in notes if n.startswith(f"{backend}:")], list(notes)):
        sizes = {s for n in chosen for s in [_size_in(n)] if s}
        if len(sizes) == 1:
            return sizes.pop()
        if sizes:
            return None
    return None


def parse_source(text: str) -> tuple[str, int | None]:
    """`file.json` or `file.json@100000` (also `@100k`, `@1M`)."""
    if "@" not in text:
        return text, None
    path, size = text.rsplit("@", 1)
    return path, parse_size(size)


def parse_size(text: str) -> int:
    text = text.strip().lower().replace(",", "").replace("_", "")
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * factor)


# -- running the scripts ------------------------------------------------------------------------


def _size_args(script: str, size: int, flags: str) -> list[str] | None:
    """Arguments that make `script` measure a ledger of about `size` events; None if it cannot."""
    if script == "compliance":
        return ["--events", str(size), "--tokens", str(max(100, size // 10))] + (
            ["--per-workspace", "200"] if size < 100_000 else []
        )
    if script == "latency" and "--tokens" in flags:
        return ["--tokens", str(max(100, size // 2))]
    if "--events" in flags:
        return ["--events", str(size)]
    return None


def run_scripts(sizes: Sequence[int], backend: str, out: Path, scripts: Sequence[str]) -> list[str]:
    """Run each script at each size it can take; returns the `FILE@SIZE` sources written."""
    out.mkdir(parents=True, exist_ok=True)
    sources: list[str] = []
    env_path = {"PYTHONPATH": str(REPO_ROOT)}
    for script in scripts:
        module = REPO_ROOT / "bench" / f"{script}.py"
        if not module.exists():
            print(f"skip {script}: no bench/{script}.py", flush=True)
            continue
        flags = subprocess.run(
            [sys.executable, "-m", f"bench.{script}", "--help"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout
        runs = [(size, _size_args(script, size, flags)) for size in sizes]
        if all(args is None for _, args in runs):
            # No ledger size (ledger_writes: a fresh store of a few thousand events): run once and
            # plot it at the smallest size.
            runs = [(min(sizes), [])]
            print(f"{script}: no size flag, run once, shown at {min(sizes):,} events", flush=True)
        for size, args in runs:
            if args is None:
                print(f"skip {script} at {size:,} events: its --help offers no flag for the size", flush=True)
                continue
            target = out / f"{script}-{backend}-{size if args else 'default'}.json"
            command = [sys.executable, "-m", f"bench.{script}", "--backend", backend, "--json", str(target), *args]
            print("$ " + " ".join(command[1:]), flush=True)
            done = subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, **env_path}).returncode
            if done != 0 or not target.exists():
                print(f"warning: {script} at {size:,} failed (exit {done})", file=sys.stderr, flush=True)
                continue
            sources.append(f"{target}@{size}")
    return sources


# -- output -------------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:,.1f}"
    return f"{value:,.2f}"


def _size_label(size: int) -> str:
    if size >= 1_000_000 and size % 1_000_000 == 0:
        return f"{size // 1_000_000}M"
    if size >= 1_000 and size % 1_000 == 0:
        return f"{size // 1_000}k"
    return f"{size:,}"


def latest(records: Sequence[Record]) -> list[Record]:
    """One record per (figure, backend, size): the one from the file given last."""
    return list({(r.figure, r.backend, r.size): r for r in records}.values())


def markdown(records: Sequence[Record]) -> str:
    """One row per figure and backend, one column per ledger size (events)."""
    records = latest(records)
    sizes = sorted({r.size for r in records})
    lines = [
        "| figure | backend | " + " | ".join(f"{_size_label(s)} events" for s in sizes) + " |",
        "|---|---|" + "---:|" * len(sizes),
    ]
    for figure in FIGURES:
        for backend in sorted({r.backend for r in records if r.figure == figure.name}):
            cells = []
            for size in sizes:
                found = [r.value for r in records if (r.figure, r.backend, r.size) == (figure.name, backend, size)]
                cells.append(f"{_fmt(found[-1])} {figure.unit}" if found else "—")
            lines.append(f"| {figure.name} | {backend} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(records: Sequence[Record], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "bench/scaling.py: matplotlib is not installed, so no plot can be drawn. Install the bench "
            "extra (pip install -e '.[bench]'), or pass --no-png to write only the JSON and Markdown."
        ) from None
    records = latest(records)
    figures = [f for f in FIGURES if any(r.figure == f.name for r in records)]
    if not figures:
        raise SystemExit("bench/scaling.py: no figure found in the results given")
    columns = 3
    rows = math.ceil(len(figures) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    styles = {"sqlite": ("tab:blue", "o"), "postgres": ("tab:orange", "s")}
    for ax, figure in zip(axes.flat, figures, strict=False):
        for backend in sorted({r.backend for r in records if r.figure == figure.name}):
            points = sorted((r.size, r.value) for r in records if (r.figure, r.backend) == (figure.name, backend))
            color, marker = styles.get(backend, ("tab:gray", "^"))
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, color=color, label=backend)
        ax.set_xscale("log")
        ax.set_xlim(min(r.size for r in records) / 2, max(r.size for r in records) * 2)  # one x range for all
        ax.set_title(f"{figure.name} ({'higher' if figure.higher_is_better else 'lower'} is better)", fontsize=9)
        ax.set_xlabel("ledger size (events)", fontsize=8)
        ax.set_ylabel(figure.unit, fontsize=8)
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for ax in list(axes.flat)[len(figures) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--from-json", nargs="+", metavar="FILE[@SIZE]", help="only read these results and plot them")
    p.add_argument(
        "--sizes",
        default=",".join(str(s) for s in DEFAULT_SIZES),
        help="ledger sizes, e.g. 10k,100k,1M: the sizes run, and the columns a measured size is put in "
        "(the nearest within 2x; the JSON keeps the measured size as `events`)",
    )
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument(
        "--scripts",
        default="compliance,projection,export,latency,ledger_writes",
        help="the benchmarks to run (without --from-json)",
    )
    p.add_argument("--out", default="bench-results", help="where the scripts' --json files go (without --from-json)")
    p.add_argument("--json", metavar="PATH", help="write the records as JSON")
    p.add_argument("--md", metavar="PATH", help="write the Markdown table (it is printed in any case)")
    p.add_argument("--png", default=str(REPO_ROOT / "docs" / "scaling.png"), help="the plot (default docs/scaling.png)")
    p.add_argument("--no-png", action="store_true", help="no plot (JSON and Markdown only)")
    p.add_argument("--title", default="tokentrail: figures against ledger size")
    args = p.parse_args(argv)
    if not args.no_png:  # fail before a long run, not after it
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("matplotlib is not installed: pip install -e '.[bench]' (or pass --no-png)")
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    if args.from_json:
        sources = args.from_json
    else:
        backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
        sources = []
        for backend in backends:
            sources += run_scripts(sizes, backend, Path(args.out), args.scripts.split(","))
    records: list[Record] = []
    for source in sources:
        path, size = parse_source(source)
        records += records_from(path, size, sizes)
    if not records:
        raise SystemExit("bench/scaling.py: no figure found in the results given")
    table = markdown(records)
    print(table)
    if args.md:
        Path(args.md).write_text(table)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"title": args.title, "sources": sources, "records": [asdict(r) for r in records]}, indent=2)
        )
    if not args.no_png:
        plot(records, Path(args.png), args.title)


if __name__ == "__main__":
    main()

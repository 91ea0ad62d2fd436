"""Interleaved before/after runs of a bench script: the same command on an earlier commit and on
this checkout, alternating, with every figure of every table row side by side.

    python scripts/bench_ab.py --base 89d729e --rounds 3 -- bench_embed.py --configs original \
        --no-peer --threads 1 --runs 5
    python scripts/bench_ab.py --base HEAD~5 --new HEAD --columns tok/s "CPU ms" -- bench_pretrain.py \
        --configs original --softmax sampled --steps 3 --no-peer --threads 1

The earlier commit's tree is exported with ``git archive`` into a temporary folder (nothing in this
checkout changes) and its script runs there with PYTHONPATH pointing at it, so it imports its own
elmo, pretrain and tasks; the data (.data) and the peer folder (../shared) are linked in, so both
sides time the same inputs. Rounds alternate the order (base first, then this checkout first, ...)
so that a change in the machine's load falls on both sides alike. The markdown table rows the
script prints are matched across runs by their leading non-numeric cells; for each numeric cell
the report gives the base and the new figure of every round and the ratio of their medians
(new / base). ``--markdown FILE`` writes the report as a section of FILE (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import ROOT  # noqa: E402

_NUMBER = re.compile(r"^-?\d[\d,]*(\.\d+)?(x|%)?$")


def number(cell: str):
    """The value of a table cell such as "1,234", "2.25x" or "4.5%", or None for text."""
    cell = cell.strip()
    return float(cell.replace(",", "").rstrip("x%")) if _NUMBER.match(cell) else None


def parse_tables(text: str) -> dict:
    """{(first column's name, row key): {column: value}} for the markdown tables in ``text``; a row's
    key is its cells before the first numeric one (the same row in every run of one command, even
    when one side's table has a column more: its figures are matched by column name)."""
    lines = [line.strip() for line in text.splitlines()]
    out: dict = {}
    header = None
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if set("".join(cells)) <= set("-: "):  # the separator under a header
            continue
        if i + 1 < len(lines) and re.fullmatch(r"\|[-:| ]+\|", lines[i + 1]):
            header = tuple(cells)
            continue
        if header is None or len(cells) != len(header):
            continue
        first = next((k for k, c in enumerate(cells) if number(c) is not None), len(cells))
        values = {header[k]: number(c) for k, c in enumerate(cells) if k >= first and number(c) is not None}
        out[(header[0], tuple(cells[:first]))] = values
    return out


def export_tree(commit: str, folder: str) -> str:
    """``commit``'s tree under ``folder``/main, with .data and ../shared linked to this checkout's."""
    tree = os.path.join(folder, "main")
    os.makedirs(tree)  # makes folder too
    git = subprocess.Popen(["git", "-C", ROOT, "archive", "--format=tar", commit], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    with tarfile.open(fileobj=git.stdout, mode="r|") as tar:
        tar.extractall(tree, filter="data")
    if git.wait() != 0:
        raise SystemExit(f"bench_ab: git archive {commit} failed: {git.stderr.read().decode().strip()}")
    for name, target in ((os.path.join(tree, ".data"), os.path.join(ROOT, ".data")),
                         (os.path.join(folder, "shared"), os.path.join(ROOT, "..", "shared"))):
        if os.path.exists(target) and not os.path.exists(name):
            os.symlink(os.path.abspath(target), name)
    return tree


def run_script(tree: str, script: str, args: list) -> str:
    env = dict(os.environ, PYTHONPATH=tree + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, os.path.join(tree, "scripts", script), *args], cwd=tree, env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{script} in {tree} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return out.stdout


def _show(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1e4 and v == int(v) else f"{v:,.4g}"


def report(base_runs: list, new_runs: list, columns: list) -> list:
    """The side-by-side table's lines: one row per (table row, numeric column) found in every run."""
    keys = [k for k in base_runs[0] if all(k in run for run in base_runs + new_runs)]
    rows = []
    for key in keys:
        _, row = key
        for column in base_runs[0][key]:
            if columns and not any(c in column for c in columns):
                continue
            base = [run[key].get(column) for run in base_runs]
            new = [run[key].get(column) for run in new_runs]
            if None in base or None in new:
                continue
            b, n = statistics.median(base), statistics.median(new)
            ratio = f"{n / b:.3f}" if b else "-"
            rows.append((" / ".join(row) or "-", column, " / ".join(map(_show, base)),
                         " / ".join(map(_show, new)), ratio))
    return benchlib.markdown_table(["row", "figure", "base, each round", "new, each round", "new / base (medians)"],
                                   rows, right=(4,))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the earlier commit (anything git accepts: 89d729e, HEAD~3)")
    p.add_argument("--new", help="a later commit to compare instead of this checkout (which may hold "
                                 "uncommitted edits)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each runs both sides once)")
    p.add_argument("--columns", nargs="*", default=[],
                   help="report only the figures whose column names contain one of these (default: all)")
    benchlib.add_output_flags(p, None)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS]: a script in scripts/ and its flags")
    args = p.parse_args(argv)
    benchlib.check_output_flags(p, args)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or not os.path.exists(os.path.join(ROOT, "scripts", command[0])):
        p.error(f"give the script after --, e.g. -- bench_embed.py --configs original; got {command or 'nothing'}")
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    script, script_args = command[0], command[1:]
    folder = tempfile.mkdtemp(prefix="elmo_bench_ab_")
    try:
        base_tree = export_tree(args.base, os.path.join(folder, "base"))
        new_tree = export_tree(args.new, os.path.join(folder, "new")) if args.new else ROOT
        for flag, tree in (("--base", base_tree), ("--new", new_tree)):
            if not os.path.exists(os.path.join(tree, "scripts", script)):
                p.error(f"{flag} {args.base if flag == '--base' else args.new} has no scripts/{script}")
        base_runs, new_runs = [], []
        for r in range(args.rounds):
            for side in (("base", "new") if r % 2 == 0 else ("new", "base")):
                text = run_script(base_tree if side == "base" else new_tree, script, script_args)
                (base_runs if side == "base" else new_runs).append(parse_tables(text))
                print(f"# round {r + 1}: {side} done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines = report(base_runs, new_runs, args.columns)
    title = (f"{script} {' '.join(script_args)}: base {args.base} vs {args.new or 'this checkout'}, "
             f"{args.rounds} interleaved rounds")
    print(title + "\n\n" + "\n".join(lines))
    if args.markdown:
        section = args.section or f"ab-{os.path.splitext(script)[0]}"
        benchlib.write_section(args.markdown, section, benchlib.section_text(
            section, f"Before/after: {script}", benchlib.command_line(__file__, argv),
            f"base {args.base}, new {args.new or 'this checkout'}, {args.rounds} interleaved rounds (order "
            "alternating), the script's own "
            f"configuration: {' '.join(script_args) or 'its defaults'}.", lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

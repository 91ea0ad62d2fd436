"""The benchmark scripts' shared harness: the AllenNLP peer runs, memory, weights, workers and the
tables they print and write into docs/benchmarks.md.

Imported by every bench script (bench_embed.py, bench_pretrain.py, bench_tasks.py, bench_cells.py,
bench_data.py, bench_datasets.py, bench_ab.py) and gpu_check.py (each puts its own folder on
``sys.path``). Only the standard library at import time: torch, numpy and elmo
are imported inside the functions that need them, and nothing here imports ``datasets`` or the
peer's packages (the GPU check runs these scripts where neither may be installed).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import random
import re
import subprocess
import sys
from typing import Iterable, Optional, Sequence

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(SCRIPTS)
PEER_DIR = os.path.join(ROOT, "..", "shared", "peers", "allennlp-elmo")
REFENV = os.environ.get("REFENV", "/tmp/refenv")
# our preset names -> the peer scripts' names for the same sizes
PEER_NAMES = {"tiny": "tiny", "small": "small", "original": "full"}


# -- the peer (AllenNLP 2.10.1, ../shared/peers/allennlp-elmo) -------------------------------------
def peer_available() -> bool:
    """Whether the AllenNLP environment (setup.sh; $REFENV, default /tmp/refenv) and scripts exist."""
    return os.path.exists(os.path.join(REFENV, "bin", "python")) and os.path.isdir(PEER_DIR)


def peer_vocabulary() -> list:
    """The words of <= 20 characters of the peer's sentences.txt (sorted), or, without the peer
    folder, a fixed pseudo-vocabulary of 2,000 draws."""
    path = os.path.join(PEER_DIR, "sentences.txt")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return sorted({t for line in f for t in line.split() if len(t) <= 20})
    rng = random.Random(1)
    return sorted({"".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 9))) for _ in range(2000)})


def peer_sentences(n: int, lo: int, hi: int, seed: int) -> list:
    """The peer's benchmark recipe: ``n`` sentences of ``lo``..``hi`` words drawn (seeded) from
    ``peer_vocabulary()``, so both sides time the same batch."""
    vocab = peer_vocabulary()
    rng = random.Random(seed)
    return [[rng.choice(vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def _peer_python() -> str:
    return os.path.join(REFENV, "bin", "python")


def run_peer_bench(mode: str, size: str, weights_dir: str, runs: int, threads: int) -> Optional[dict]:
    """AllenNLP's bench_reference.py (``mode`` "infer" or "train") on the weights in
    ``weights_dir``: {"tokens_per_s", "peak_mib"}, or None (with the reason on stderr)."""
    runs_flag = "--runs" if mode == "infer" else "--train-runs"
    cmd = [_peer_python(), os.path.join(PEER_DIR, "bench_reference.py"), "--configs", PEER_NAMES[size],
           "--mode", mode, "--weights-dir", weights_dir, runs_flag, str(runs), "--threads", str(threads)]
    return _run_peer(cmd, r"([\d.]+) tokens/s median.*peak RSS (\d+) MiB", "stdout", mode)


def run_peer_file(options: str, weights: str, src: str, dst: str, threads: int) -> Optional[dict]:
    """AllenNLP's run_reference.py (``allennlp elmo`` batching, batch 64, stateless) over the file
    ``src`` into the HDF5 file ``dst``: {"tokens_per_s", "peak_mib"}, or None."""
    cmd = [_peer_python(), os.path.join(PEER_DIR, "run_reference.py"), "--options", options,
           "--weights", weights, "--input", src, "--output", dst, "--batch-size", "64", "--stateless",
           "--threads", str(threads)]
    return _run_peer(cmd, r"\(([\d.]+) tokens/s\), peak RSS (\d+) MiB", "stderr", "file")


def _run_peer(cmd: list, pattern: str, stream: str, what: str) -> Optional[dict]:
    """Run a peer script; its speed and peak RSS read from ``stream`` by ``pattern``, or None."""
    out = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(pattern, getattr(out, stream))
    if out.returncode != 0 or not m:
        print(f"# AllenNLP {what} run failed: {out.stderr[-500:]}", file=sys.stderr)
        return None
    return {"tokens_per_s": float(m.group(1)), "peak_mib": float(m.group(2))}


# -- weights, memory, devices ------------------------------------------------------------------------
def ensure_weights(size: str, weights_dir: str, bias_std: float = 0.0) -> tuple:
    """Random weights of our preset ``size`` (seed 0) in the original layout (options.json + HDF5),
    named as the peer's scripts expect (``full_options.json`` for ORIGINAL); written once and reused.
    ``bias_std`` > 0 draws the LSTM input biases from N(0, bias_std) (so the gates are not all
    centred). Returns (options path, weights path)."""
    name = PEER_NAMES[size]
    options = os.path.join(weights_dir, f"{name}_options.json")
    weights = os.path.join(weights_dir, f"{name}_weights.hdf5")
    if not (os.path.exists(options) and os.path.exists(weights)):
        import torch

        from elmo import ElmoBiLM, preset, save_original

        torch.manual_seed(0)
        model = ElmoBiLM(preset(size))
        if bias_std > 0:
            with torch.no_grad():
                for param_name, p in model.named_parameters():
                    if param_name.endswith("input_bias"):
                        p.normal_(0, bias_std)
        os.makedirs(weights_dir, exist_ok=True)
        save_original(model, options, weights)
    return options, weights


def memory_mib() -> dict:
    """This process's memory in MiB from /proc/self/status (Linux): ``peak`` (VmHWM, the high-water
    mark of the resident set), ``rss`` (VmRSS, now), ``anon`` (RssAnon: heap, tensors) and ``file``
    (RssFile: mapped files such as a memory-mapped corpus). Elsewhere only ``peak``, from
    ``ru_maxrss``. VmHWM is the process's own: a child's ``ru_maxrss`` also counts the parent's
    resident set at the fork, which Linux carries across exec."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        kib = {key: int(status[field].split()[0]) for key, field in
               (("peak", "VmHWM"), ("rss", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile"))}
        return {key: value / 1024.0 for key, value in kib.items()}
    except (OSError, KeyError, ValueError):
        import resource  # POSIX only; imported here so that the rest of the harness works elsewhere

        return {"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def peak_mib(device: str = "cpu") -> float:
    """This process's peak memory in MiB: the high-water mark of its resident set on CPU
    (``memory_mib()["peak"]``), the peak allocated GPU memory (``torch.cuda.max_memory_allocated``)
    on CUDA."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return memory_mib()["peak"]


def cpu_seconds(children: bool = False) -> float:
    """User + system CPU seconds of this process, or with ``children`` of its finished children
    (each waited-for subprocess and the workers it started)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def mib(nbytes: float) -> str:
    """A byte count as "1,234 MiB"."""
    return f"{nbytes / 2**20:,.0f} MiB"


def sync(device) -> None:
    """Wait for the device's queued work (``torch.cuda.synchronize``) before reading a clock; a no-op
    on CPU."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# -- workers: one measurement per fresh process --------------------------------------------------------
def run_worker(script: str, spec: dict, timeout: Optional[float] = None, keep_going: bool = False,
               env: Optional[dict] = None, cwd: Optional[str] = None) -> dict:
    """Run ``python script --worker JSON`` in a fresh process (its own peak memory) and return the
    JSON object on its last stdout line. A failure raises RuntimeError with the stderr tail, or with
    ``keep_going`` returns {"error": one line} (a timeout too), for tables that report it in place.
    ``env`` replaces the environment and ``cwd`` the folder of the worker (default: this process's)."""
    try:
        out = subprocess.run([sys.executable, script, "--worker", json.dumps(spec)],
                             capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired:
        if keep_going:
            return {"error": f"timed out after {timeout:.0f} s"}
        raise
    if out.returncode != 0:
        if keep_going:
            last = (out.stderr.strip().splitlines() or ["no output"])[-1]
            return {"error": last[:160].replace("|", "/")}
        raise RuntimeError(f"worker {spec} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the record: machine, commit, tables, docs/benchmarks.md ----------------------------------------
def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """The checkout's short commit, with "+changes" when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "diff", "--quiet", "HEAD", "--"], capture_output=True).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def machine(device: str = "cpu", threads: Optional[int] = None) -> str:
    """One line naming the hardware and software a figure was measured on."""
    import torch

    parts = [f"{cpu_model()} ({os.cpu_count()} logical CPUs visible)",
             f"torch {torch.__version__}", f"cpu capability {torch.backends.cpu.get_cpu_capability()}"]
    if threads is not None:
        parts.append(f"{threads} torch thread{'s' if threads != 1 else ''}")
    if str(device).startswith("cuda") and torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(torch.device(device))}, CUDA {torch.version.cuda}")
    if hasattr(os, "getloadavg"):  # other jobs on the machine slow a run down: say how busy it was
        parts.append(f"load average {os.getloadavg()[0]:.1f} when written")
    return ", ".join(parts)


def fmt(value, spec: str = ",.0f", missing: str = "-") -> str:
    """``format(value, spec)``, or ``missing`` for None."""
    return missing if value is None else format(value, spec)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], right: Sequence[int] = ()) -> list:
    """A markdown table's lines; the columns whose indices are in ``right`` are right-aligned."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|"]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"markdown_table: a row has {len(row)} cells for {len(header)} columns: {row!r}")
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return lines


def command_line(script: str, argv: Optional[Sequence[str]]) -> str:
    """The command that reproduces this run, as a user would type it from the repository root."""
    import shlex

    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", os.path.relpath(script, ROOT)] + [shlex.quote(a) for a in args])


def section_text(name: str, title: str, command: str, config: str, body: Sequence[str],
                 device: str = "cpu", threads: Optional[int] = None) -> str:
    """One section of docs/benchmarks.md, between its markers: heading, command, commit, date,
    machine, configuration, then ``body`` (the tables)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"<!-- bench:{name} -->", f"### {title}", "",
             f"`{command}`", "",
             f"Commit {git_commit()}, {stamp}; {machine(device, threads)}.", "",
             f"Configuration: {config}", "", *body, f"<!-- /bench:{name} -->"]
    return "\n".join(lines)


_DEFAULT_PAGE = """# Benchmarks

Every figure here comes from a script in `scripts/`; each section below was written by the command
it shows (`--markdown docs/benchmarks.md`), with the commit, the date, the machine and the exact
configuration. Running a command again replaces its section in place (sections are delimited by
`<!-- bench:NAME -->` markers; nothing outside them is touched). Compare figures from the same run
or from interleaved runs: on a shared machine they vary by 15% or more.

"""


def write_section(path: str, name: str, text: str) -> None:
    """Put ``text`` (from ``section_text``) into the markdown file ``path`` in place of its section
    ``name``, or append it when the file has no such section (a new file starts with a short
    header). The file is replaced atomically; text outside the markers is kept as it was."""
    from elmo.io import write_text_atomic

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"section name {name!r}: use letters, digits, '.', '_' or '-'")
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    old = _DEFAULT_PAGE
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = f.read()
    if old.count(begin) > 1 or old.count(end) > 1 or (begin in old) != (end in old):
        raise ValueError(f"{path}: the markers of section {name!r} are not one {begin} ... {end} pair; "
                         "fix the file by hand")
    if begin in old:
        i, j = old.index(begin), old.index(end) + len(end)
        if j < i:
            raise ValueError(f"{path}: {end} comes before {begin}; fix the file by hand")
        new = old[:i] + text + old[j:]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--markdown {path}: the folder {folder} does not exist")
    write_text_atomic(path, new)


def add_output_flags(parser, section: Optional[str] = None) -> None:
    """The output flags every bench script takes: --markdown FILE, --section NAME (``section``: the
    default name, or None where the script names the section after the run's configuration)."""
    parser.add_argument("--markdown", metavar="FILE",
                        help="also write the tables, with the command, commit, machine and configuration, "
                             "as a section of FILE (e.g. docs/benchmarks.md), replacing an earlier one")
    parser.add_argument("--section", default=section,
                        help="the section's name in --markdown (default: "
                             f"{section or 'named after the script and the configuration'})")


def check_output_flags(parser, args) -> None:
    """Refuse an unusable --markdown before any measurement runs (argparse's one-line error, exit 2)."""
    path = getattr(args, "markdown", None)
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        parser.error(f"--markdown {path} is a folder; give a markdown file such as docs/benchmarks.md")
    if not os.path.isdir(folder):
        parser.error(f"--markdown {path}: the folder {folder} does not exist; create it or pick another file")
    if not os.access(path if os.path.exists(path) else folder, os.W_OK):
        parser.error(f"--markdown {path}: not writable")
    if args.section is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", args.section):
        parser.error(f"--section {args.section!r}: use letters, digits, '.', '_' or '-'")

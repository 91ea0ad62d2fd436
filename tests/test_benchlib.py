"""scripts/benchlib.py, the bench scripts' shared harness: the peer's batch recipe, the weights,
workers, tables and the sections it writes into docs/benchmarks.md."""

import os
import random
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import benchlib  # noqa: E402


def test_peer_sentences_follow_the_recipe():
    vocab = benchlib.peer_vocabulary()
    assert vocab == sorted(set(vocab)) and all(len(w) <= 20 for w in vocab) and len(vocab) > 100
    batch = benchlib.peer_sentences(32, 20, 30, seed=0)
    rng = random.Random(0)  # the recipe both bench scripts and the peer use
    assert batch == [[rng.choice(vocab) for _ in range(rng.randint(20, 30))] for _ in range(32)]
    assert all(20 <= len(s) <= 30 for s in batch)
    assert benchlib.peer_sentences(32, 20, 30, seed=0) == batch  # deterministic
    assert [len(s) for s in benchlib.peer_sentences(5, 20, 20, seed=1)] == [20] * 5


def test_ensure_weights_writes_once_and_loads(tmp_path):
    from elmo import load_original

    options, weights = benchlib.ensure_weights("tiny", str(tmp_path), bias_std=0.2)
    assert os.path.basename(options) == "tiny_options.json" and os.path.exists(weights)
    stamp = os.stat(weights).st_mtime_ns
    assert benchlib.ensure_weights("tiny", str(tmp_path), bias_std=0.2) == (options, weights)
    assert os.stat(weights).st_mtime_ns == stamp  # reused, not rewritten
    model = load_original(options, weights)
    biases = [p for n, p in model.named_parameters() if n.endswith("input_bias")]
    assert biases and 0.1 < float(torch.cat([b.detach().flatten() for b in biases]).std()) < 0.3
    plain, _ = benchlib.ensure_weights("tiny", str(tmp_path / "plain"))
    assert os.path.basename(plain) == "tiny_options.json"


def test_run_worker_returns_the_last_json_line(tmp_path):
    script = tmp_path / "w.py"
    script.write_text("import json, sys\nspec = json.loads(sys.argv[2])\nprint('noise')\n"
                      "if spec.get('fail'):\n    sys.exit('bad | thing')\n"
                      "print(json.dumps({'twice': 2 * spec['x']}))\n")
    assert benchlib.run_worker(str(script), {"x": 21}) == {"twice": 42}
    with pytest.raises(RuntimeError, match="bad"):
        benchlib.run_worker(str(script), {"x": 1, "fail": True})
    assert benchlib.run_worker(str(script), {"x": 1, "fail": True}, keep_going=True) == {"error": "bad / thing"}


def test_markdown_table():
    lines = benchlib.markdown_table(["a", "b"], [(1, "x"), ("2", None)], right=(0,))
    assert lines == ["| a | b |", "|---:|---|", "| 1 | x |", "| 2 | None |"]
    with pytest.raises(ValueError, match="1 cells for 2 columns"):
        benchlib.markdown_table(["a", "b"], [(1,)])
    assert benchlib.fmt(None) == "-" and benchlib.fmt(1234.5) == "1,234" and benchlib.fmt(0.5, ".2f") == "0.50"


def test_sections_are_written_replaced_and_appended(tmp_path):
    page = tmp_path / "benchmarks.md"
    one = benchlib.section_text("embed-cpu", "Inference", "python scripts/bench_embed.py", "batch 32",
                                ["| a |", "|---|", "| 1 |"], threads=1)
    assert one.startswith("<!-- bench:embed-cpu -->\n### Inference\n") and one.endswith("<!-- /bench:embed-cpu -->")
    assert "`python scripts/bench_embed.py`" in one and "Configuration: batch 32" in one and "1 torch thread" in one
    assert torch.__version__ in one and benchlib.cpu_model() in one
    benchlib.write_section(str(page), "embed-cpu", one)  # a new page: the header, then the section
    text = page.read_text()
    assert text.startswith("# Benchmarks\n") and text.endswith(one + "\n")

    page.write_text("# Mine\n\nbefore\n\n" + one + "\n\nafter, by hand\n")
    two = one.replace("| 1 |", "| 2 |")
    benchlib.write_section(str(page), "embed-cpu", two)  # replaced in place, the rest kept
    assert page.read_text() == "# Mine\n\nbefore\n\n" + two + "\n\nafter, by hand\n"
    other = benchlib.section_text("tasks-tiny-t1", "NER", "cmd", "cfg", ["x"])
    benchlib.write_section(str(page), "tasks-tiny-t1", other)  # appended after the others
    assert page.read_text() == "# Mine\n\nbefore\n\n" + two + "\n\nafter, by hand\n\n" + other + "\n"

    page.write_text(one + "\n" + one + "\n")  # two copies: which one to replace is not known
    with pytest.raises(ValueError, match="not one"):
        benchlib.write_section(str(page), "embed-cpu", two)
    assert page.read_text() == one + "\n" + one + "\n"  # left as it was
    with pytest.raises(ValueError, match="section name"):
        benchlib.write_section(str(page), "a b", two)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        benchlib.write_section(str(tmp_path / "no" / "page.md"), "embed-cpu", one)


def test_machine_and_commit():
    line = benchlib.machine("cpu", threads=2)
    assert f"torch {torch.__version__}" in line and "2 torch threads" in line
    commit = benchlib.git_commit()
    assert commit == "unknown" or len(commit.split("+")[0]) >= 7


def test_the_harness_imports_no_optional_package():
    """The GPU check runs the bench scripts where neither `datasets` nor the peer may exist."""
    import subprocess

    code = ("import sys; sys.modules['datasets'] = None; sys.path.insert(0, 'scripts'); import benchlib; "
            "assert 'torch' not in sys.modules, 'benchlib imports torch at import time'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_bench_cells_layers_only_writes_its_section(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_cells", os.path.join(ROOT, "scripts", "bench_cells.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    page = tmp_path / "benchmarks.md"
    argv = ["--layers-only", "--cells", "lstm", "gru", "--steps", "1", "--threads", "1", "--batch-size", "4",
            "--window", "5", "--markdown", str(page)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    text = page.read_text()
    assert text.count("<!-- bench:cells-layers-params -->") == 1
    assert "Configuration: cells lstm, gru, preset tiny, equal parameters" in text
    rows = [line for line in text.splitlines() if line.startswith("| lstm |") or line.startswith("| gru |")]
    assert len(rows) == 2 and rows[0].endswith("| 1.00x |")
    assert all(row in printed for row in rows)


def _load(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _section(text, name):
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    assert text.count(begin) == 1 and text.count(end) == 1
    return text[text.index(begin) : text.index(end)]


def test_bench_embed_and_pretrain_write_their_sections(tmp_path, capsys):
    """The CPU tables of both scripts (tiny sizes, no peer) land in one page, each in its section."""
    page = tmp_path / "benchmarks.md"
    embed = _load("bench_embed")
    assert embed.main(["--configs", "tiny", "--runs", "1", "--file-sentences", "8", "--dtypes", "float32",
                       "--no-peer", "--threads", "1", "--weights-dir", str(tmp_path / "w"),
                       "--markdown", str(page)]) == 0
    pretrain = _load("bench_pretrain")
    assert pretrain.main(["--configs", "tiny", "--softmax", "sampled", "--steps", "1", "--vocab", "2000",
                          "--samples", "64", "--no-peer", "--threads", "1", "--weights-dir", str(tmp_path / "w2"),
                          "--markdown", str(page)]) == 0
    printed = capsys.readouterr().out
    text = page.read_text()
    inference = _section(text, "embed-cpu")
    rows = [line for line in inference.splitlines() if line.startswith("| tiny |")]
    assert len(rows) == 2 and "batch 32x20-30 (822 tok)" in rows[0] and "file 8 sent" in rows[1]
    assert all(row in printed for row in rows) and "AllenNLP peer: not run" in inference
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert float(cells[0][6].replace(",", "")) > 0 and cells[1][6] == "-"  # CPU ms per batch call; none for the file
    training = _section(text, "pretrain-cpu")
    assert "| tiny | sampled (64) |" in training and "2,000-word vocabulary" in training
    step = next(line for line in training.splitlines() if line.startswith("| tiny | sampled (64) |"))
    tokens_per_s, cpu_ms = (float(c.replace(",", "")) for c in step.strip("|").split("|")[2:4])
    assert tokens_per_s > 0 and cpu_ms > 0
    assert text.index("bench:embed-cpu") < text.index("bench:pretrain-cpu")  # appended in run order


def test_bench_lstm_loop_compares_the_loops_on_the_same_losses(tmp_path, capsys):
    """Fused and stepped LSTM loops in interleaved fresh processes: the row has both times, their
    ratio, and the two loops' losses agree (float32; the same function)."""
    page = tmp_path / "benchmarks.md"
    loop = _load("bench_lstm_loop")
    assert loop.main(["--config", "tiny", "--kinds", "zoneout", "--runs", "1", "--steps", "1", "--check-steps", "3",
                      "--vocab", "500", "--set", "data.batch_size=4", "--set", "data.window=6",
                      "--markdown", str(page)]) == 0
    printed = capsys.readouterr().out
    section = _section(page.read_text(), "lstm-loop")
    line = next(line for line in section.splitlines() if line.startswith("| zoneout | 0.1 |"))
    assert line in printed and "preset tiny (24 tokens a step; data.batch_size=4, data.window=6)" in section
    cells = [c.strip() for c in line.strip("|").split("|")]
    fused_ms, stepped_ms = float(cells[2]), float(cells[3])
    assert fused_ms > 0 and stepped_ms > 0 and cells[6].endswith("x") and float(cells[6][:-1]) > 0
    assert float(cells[-1]) < 1e-4  # max loss difference of the two loops
    assert "1 fresh processes per regularizer, each 1 steps per loop" in section
    with pytest.raises(SystemExit) as stop:
        loop.main(["--kinds", "zoneout", "variational", "--rates", "0.1"])
    assert stop.value.code == 2 and "--rates: 1 rates for 2 kinds" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["bench_embed", "bench_pretrain", "bench_tasks", "bench_cells", "bench_data",
                                    "bench_datasets", "gpu_check", "bench_lstm_loop"])
def test_an_unusable_markdown_file_is_refused_before_measuring(script, tmp_path, capsys):
    bench = _load(script)
    for argv, message in ([["--markdown", str(tmp_path / "no" / "b.md")], "does not exist"],
                          [["--markdown", str(tmp_path)], "is a folder"],
                          [["--markdown", str(tmp_path / "b.md"), "--section", "a b"], "--section"]):
        with pytest.raises(SystemExit) as stop:
            bench.main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert message in err
    assert not (tmp_path / "b.md").exists()


def test_bench_ab_parses_tables_and_compares_medians():
    ab = _load("bench_ab")
    text = ("# a comment\n| size | workload | tok/s | ratio | note |\n|---|---|---:|---:|---|\n"
            "| small | batch | 4,086 | 3.22x | max abs 5e-07 |\n| small | file | 4,769 | - | |\n\n"
            "| config | tokens/s |\n|---|---:|\n| tiny | 2,663 |\n")
    tables = ab.parse_tables(text)
    assert tables == {("size", ("small", "batch")): {"tok/s": 4086.0, "ratio": 3.22},
                      ("size", ("small", "file")): {"tok/s": 4769.0},
                      ("config", ("tiny",)): {"tokens/s": 2663.0}}
    # a table with one column more (a newer script) still matches row by row, column by name
    newer = ab.parse_tables("| size | workload | tok/s | CPU ms | ratio | note |\n|---|---|---:|---:|---:|---|\n"
                            "| small | batch | 4,100 | 200 | 3.3x | |\n")
    assert newer == {("size", ("small", "batch")): {"tok/s": 4100.0, "CPU ms": 200.0, "ratio": 3.3}}
    assert ab.report([tables], [newer], ["tok/s"])[2] == "| small / batch | tok/s | 4,086 | 4,100 | 1.003 |"
    key = ("config", ("tiny",))
    base = [{key: {"tokens/s": v}} for v in (100.0, 300.0, 200.0)]
    new = [{key: {"tokens/s": v}} for v in (210.0, 190.0, 230.0)]
    lines = ab.report(base, new, [])
    assert lines[2] == "| tiny | tokens/s | 100 / 300 / 200 | 210 / 190 / 230 | 1.050 |"  # 210 / 200
    assert ab.report(base, new, ["CPU"]) == lines[:2]  # no column matches


def test_bench_ab_runs_both_sides_interleaved(tmp_path, capsys):
    ab = _load("bench_ab")
    page = tmp_path / "b.md"
    assert ab.main(["--base", "HEAD", "--rounds", "1", "--columns", "H", "params", "--markdown", str(page), "--",
                    "bench_cells.py", "--layers-only", "--cells", "lstm", "--steps", "1", "--threads", "1",
                    "--batch-size", "2", "--window", "3"]) == 0
    out = capsys.readouterr().out
    assert "| lstm | H | 512 | 512 | 1.000 |" in out and "| lstm | biLM params | 1,187,840 | 1,187,840 | 1.000 |" in out
    assert "<!-- bench:ab-bench_cells -->" in page.read_text()
    assert ab.main(["--base", "HEAD", "--new", "HEAD", "--rounds", "1", "--columns", "H", "--",
                    "bench_cells.py", "--layers-only", "--cells", "gru", "--steps", "1", "--threads", "1",
                    "--batch-size", "2", "--window", "3"]) == 0
    out = capsys.readouterr().out
    assert "base HEAD vs HEAD" in out and "| gru | H | 274 | 274 | 1.000 |" in out
    with pytest.raises(SystemExit):
        ab.main(["--base", "HEAD", "--", "no_such_script.py"])


def test_memory_is_the_process_own_not_the_parent_carried_across_exec(tmp_path):
    big = bytearray(300 * 2**20)
    big[::4096] = b"\1" * len(big[::4096])  # touch every page: the parent's resident set grows by 300 MiB
    script = tmp_path / "w.py"
    script.write_text(f"import json, resource, sys\nsys.path.insert(0, {os.path.join(ROOT, 'scripts')!r})\n"
                      "import benchlib\n"
                      "print(json.dumps({**benchlib.memory_mib(), 'peak_mib': benchlib.peak_mib(),\n"
                      "                  'ru_maxrss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n")
    child = benchlib.run_worker(str(script), {})
    assert benchlib.memory_mib()["peak"] >= 300
    assert child["ru_maxrss"] >= 300  # what ru_maxrss reads in a child of a large process (Linux)
    assert child["peak"] < 100 and abs(child["peak_mib"] - child["peak"]) < 5  # the child's own high-water mark
    assert 0 < child["anon"] <= child["rss"] <= child["peak"] and child["file"] > 0
    del big
    assert benchlib.mib(3 * 2**20) == "3 MiB" and benchlib.mib(1234.4 * 2**20) == "1,234 MiB"
    spent = benchlib.cpu_seconds(children=True)
    assert spent > 0 and benchlib.cpu_seconds() > 0


def test_bench_data_report_table_and_extrapolation():
    import argparse

    bench = _load("bench_data")
    common = {"runs": {}, "readers": [{"peak_mib": 100.0}, {"peak_mib": 110.0}]}
    small = {"tokens": 10e6, "prepared_bytes": 100 * 2**20, "text_bytes": 50 * 2**20, "prep_whitespace_2": 10.0,
             "prep_whitespace_2_cpu": 20.0, "batch_prepared": (2e6, 1e6, 1.5e6), **common}
    large = {"tokens": 100e6, "prepared_bytes": 1000 * 2**20, "text_bytes": 500 * 2**20, "prep_whitespace_2": 100.0,
             "prep_whitespace_2_cpu": 200.0, "batch_prepared": (3e6, 1e6, 1e6), **common}
    lines = bench.report([small, large], argparse.Namespace(steps=200))
    assert lines[:2] == ["|  | 10M tokens | 100M tokens |", "|---|---:|---:|"]
    rows = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ")}
    assert rows["prepare, whitespace, 2 workers"] == "| prepare, whitespace, 2 workers | 1.00M tokens/s | 1.00M tokens/s |"
    assert rows["prepare, whitespace, 1 worker"].endswith("| - | - |")  # not measured: a dash, not an error
    assert rows["prepared corpus on disk"] == "| prepared corpus on disk | 100 MiB | 1,000 MiB |"
    assert rows["2 processes reading their halves of an epoch: peak RSS each"].endswith("| 100 MiB / 110 MiB |")
    text = "\n".join(lines)
    # at 1B tokens, on the line through (10M, 100 MiB) and (100M, 1,000 MiB): 10,000 MiB; CPU 2,000 s, wall 1,000 s
    assert "prepared corpus on disk: 9.8 GiB (text: 4.9 GiB); preparation with 2 workers: 33.3 CPU minutes, " \
           "16.7 min wall" in text
    assert "one core produces prepared window batches at 2.00M tokens/s, 8.0x that." in text

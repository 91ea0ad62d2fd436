"""``elmo-pretrain evaluate``: perplexity per direction in stream and sentence mode, for run
directories and for the exported original files."""

import json
import math
import os
import shutil

import pytest
import torch

from pretrain.cli import main
from pretrain.evaluate import evaluate_text, load_lm
from pretrain.export import SOFTMAX_NAME, export_original
from pretrain.run import run
from pretrain_util import single_thread, tiny_pretrain_config, toy_sentences, write_lines  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def evaluate_json(capsys, *argv) -> dict:
    capsys.readouterr()
    assert main(["evaluate", *argv, "--json", "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
    """A run directory after 2 steps of a tiny biLM (residual connections, 2 layers)."""
    tmp = tmp_path_factory.mktemp("random_run")
    corpus = write_lines(str(tmp / "train.txt"), toy_sentences(60))
    out = str(tmp / "run")
    torch.set_num_threads(1)
    run(tiny_pretrain_config(softmax={"kind": "full"}, train={"max_steps": 2, "eval_at_start": False}),
        [corpus], out)
    return out


def test_a_memorised_sentence_has_perplexity_near_one(tmp_path, capsys):
    line = "the quick brown fox jumps over the lazy dog ."
    corpus = write_lines(str(tmp_path / "train.txt"), [line] * 40)
    out = str(tmp_path / "run")
    config = tiny_pretrain_config(data={"batch_size": 4, "window": 8}, softmax={"kind": "full"},
                                  optim={"optimizer": "adam", "lr": 0.03, "dropout": 0.0},
                                  train={"max_steps": 150, "eval_at_start": False})
    run(config, [corpus], out)
    test = write_lines(str(tmp_path / "test.txt"), [line] * 6)
    stream = evaluate_json(capsys, out, "--data", test, "--window", "5", "--batch-size", "1")
    assert stream["tokens"] == 6 * 11  # 10 words + </S> per sentence and direction
    assert stream["oov_words"] == 0 and stream["words"] == 60
    assert 1.0 <= stream["forward_ppl"] < 1.2 and 1.0 <= stream["backward_ppl"] < 1.2, stream
    sentence = evaluate_json(capsys, out, "--data", test, "--mode", "sentence")
    assert sentence["tokens"] == 66
    # Trained on carried-state windows, the model meets the cold initial state once per sentence
    # here (the first target of each direction): a little less certain, still near 1.
    assert sentence["forward_ppl"] < 1.5 and sentence["backward_ppl"] < 1.5, sentence
    # An unrelated sentence of known words is far less likely; unknown words are counted.
    other = write_lines(str(tmp_path / "other.txt"), ["dog the lazy over zebra xylophone ."])
    result = evaluate_json(capsys, out, "--data", other)
    assert result["oov_words"] == 2 and result["words"] == 7
    assert result["forward_ppl"] > 10 * stream["forward_ppl"]


def test_stream_and_sentence_modes_agree_on_a_one_sentence_file(random_run, tmp_path):
    lm, vocab, _ = load_lm(random_run)
    path = write_lines(str(tmp_path / "one.txt"), ["the old man finds a red car ."])
    # Windows of 3 tokens: the stream crosses several windows with the state carried.
    stream = evaluate_text(lm, vocab, [path], "stream", window=3, batch_size=20)
    sentence = evaluate_text(lm, vocab, [path], "sentence")
    assert stream["tokens"] == sentence["tokens"] == 9
    for key in ("forward_loss", "backward_loss"):
        assert stream[key] == pytest.approx(sentence[key], abs=1e-5)
    assert 8 < stream["forward_ppl"] < 1e4  # a real number, not a degenerate one


def test_stream_mode_carries_the_state_across_sentences(random_run, tmp_path):
    lm, vocab, _ = load_lm(random_run)
    lines = toy_sentences(6, seed=3)
    path = write_lines(str(tmp_path / "six.txt"), lines)
    stream = evaluate_text(lm, vocab, [path], "stream", window=4, batch_size=1)
    sentence = evaluate_text(lm, vocab, [path], "sentence")
    assert stream["tokens"] == sentence["tokens"] == sum(len(s.split()) + 1 for s in lines)
    assert abs(stream["forward_loss"] - sentence["forward_loss"]) > 1e-4  # context from before
    # Cutting the text into more slices changes where the state starts, not the target count.
    sliced = evaluate_text(lm, vocab, [path], "stream", window=4, batch_size=3)
    assert sliced["tokens"] == stream["tokens"]


def test_the_exported_original_files_evaluate_like_the_run_directory(random_run, tmp_path, capsys):
    exported = tmp_path / "original"
    exported.mkdir()
    export_original(random_run, str(exported / "options.json"), str(exported / "weights.hdf5"),
                    str(exported / "vocab.txt"))
    path = write_lines(str(tmp_path / "text.txt"), toy_sentences(12, seed=5))
    ours = evaluate_json(capsys, random_run, "--data", path)
    softmax = os.path.join(random_run, SOFTMAX_NAME)
    original = evaluate_json(capsys, str(exported), "--data", path, "--softmax", softmax)
    for key in ("forward_loss", "backward_loss", "tokens", "words", "oov_words"):
        assert original[key] == pytest.approx(ours[key], abs=1e-6), key
    shutil.copy(softmax, exported / SOFTMAX_NAME)  # beside the original files: found there
    assert evaluate_json(capsys, str(exported), "--data", path)["forward_loss"] == \
        pytest.approx(ours["forward_loss"], abs=1e-6)


def test_clear_errors(random_run, tmp_path, capsys):
    path = write_lines(str(tmp_path / "t.txt"), ["a dog ."])
    assert main(["evaluate", str(tmp_path / "missing"), "--data", path]) == 2
    assert "no such directory" in capsys.readouterr().err
    bare = tmp_path / "bare"
    shutil.copytree(random_run, bare, ignore=shutil.ignore_patterns(SOFTMAX_NAME, "checkpoints"))
    assert main(["evaluate", str(bare), "--data", path]) == 2
    err = capsys.readouterr().err
    assert "no softmax file" in err and "--softmax" in err
    assert main(["evaluate", random_run, "--data", path, "--window", "0"]) == 2
    assert "--window must be >= 1" in capsys.readouterr().err
    # the training command line still works without the subcommand
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--train" in capsys.readouterr().out


def test_forward_only_runs_report_no_backward_perplexity(tmp_path, capsys):
    corpus = write_lines(str(tmp_path / "train.txt"), toy_sentences(40))
    out = str(tmp_path / "run")
    run(tiny_pretrain_config(softmax={"kind": "full"},
                             train={"max_steps": 2, "eval_at_start": False, "directions": "forward"}),
        [corpus], out)
    result = evaluate_json(capsys, out, "--data", corpus)  # the run's directions by default
    assert result["backward_ppl"] is None and math.isfinite(result["forward_ppl"])
    both = evaluate_json(capsys, out, "--data", corpus, "--directions", "both")
    assert both["forward_loss"] == pytest.approx(result["forward_loss"], abs=1e-9)
    assert both["backward_ppl"] is not None


def test_a_checkpoint_evaluates_like_the_model_it_was_saved_with(random_run, tmp_path, capsys):
    path = write_lines(str(tmp_path / "text.txt"), toy_sentences(8, seed=7))
    checkpoints = sorted(os.listdir(os.path.join(random_run, "checkpoints")))
    last = os.path.join(random_run, "checkpoints", checkpoints[-1])  # the final step's
    ours = evaluate_json(capsys, random_run, "--data", path)
    from_checkpoint = evaluate_json(capsys, last, "--data", path)
    for key in ("forward_loss", "backward_loss", "tokens"):
        assert from_checkpoint[key] == pytest.approx(ours[key], abs=1e-7), key


def test_a_forward_only_training_reports_no_backward_perplexity(tmp_path, capsys):
    """results.json stays strict JSON (null, not NaN) and the summary line says the backward LM
    was not trained, instead of printing 'backward nan' (the PTB run's last line before)."""
    from pretrain.lm import perplexities
    corpus = write_lines(str(tmp_path / "train.txt"), toy_sentences(40))
    held = write_lines(str(tmp_path / "held.txt"), toy_sentences(6, seed=3))
    config = tmp_path / "config.json"
    tiny_pretrain_config(softmax={"kind": "full"},
                         train={"eval_at_start": False, "directions": "forward"}).save(config)
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["--train", corpus, "--heldout", held, "--out", str(out), "--config", str(config),
                 "--max-steps", "2", "--no-progress", "--log-level", "WARNING"]) == 0
    printed = capsys.readouterr().out
    assert "(forward LM only)" in printed and "nan" not in printed, printed
    text = (out / "results.json").read_text()
    assert "NaN" not in text
    held_out = json.loads(text)["heldout"]
    assert held_out["backward_perplexity"] is None and held_out["forward_perplexity"] > 1.0
    # metrics.jsonl too: strict JSON lines (a parser that refuses NaN reads them), null backward
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    with open(out / "metrics.jsonl", encoding="utf-8") as f:
        records = [json.loads(line, parse_constant=refuse) for line in f]
    evals = [r for r in records if "heldout_forward_ppl" in r]
    assert evals and all(r["heldout_backward_ppl"] is None and r["heldout_forward_ppl"] > 1.0
                         for r in evals), evals
    from pretrain.plot import plot_curves, pyplot
    if pyplot() is not None:  # the curves of a forward-only run (no backward line to draw)
        assert plot_curves(str(out / "metrics.jsonl"), str(tmp_path / "curves.png"))
        assert (tmp_path / "curves.png").stat().st_size > 1000
    # a direction that counted no targets: NaN, not exp(0) = 1
    res = perplexities(torch.tensor([6.0, 0.0], dtype=torch.float64), torch.tensor([3, 0]))
    assert res["forward_ppl"] == pytest.approx(math.exp(2.0)) and math.isnan(res["backward_ppl"])

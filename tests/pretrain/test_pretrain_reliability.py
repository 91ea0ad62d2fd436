"""elmo-pretrain given what a user may try (issue 14): a refused --resume writes nothing, allowed
resume changes are applied, other text is refused, a diverged run stops with exit code 2 and
leaves the last good checkpoint as the latest, a full disk is one line, orphans are removed."""

import json
import os

import pytest
import torch

from elmo import ElmoBiLM
from pretrain import checkpoint as ckpt
from pretrain.cli import main
from pretrain_util import single_thread, tiny_pretrain_config, toy_sentences, write_lines  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def cli(argv, capsys):
    capsys.readouterr()
    rc = main([*argv, "--no-progress", "--log-level", "WARNING"])
    return rc, capsys.readouterr().err


@pytest.fixture
def run_dir(tmp_path, capsys):
    """A run of 4 steps with checkpoints at 2 and 4 (constant learning rate 0.01)."""
    corpus = write_lines(str(tmp_path / "train.txt"), toy_sentences(60))
    config = tiny_pretrain_config(optim={"optimizer": "adam", "lr": 0.01},
                                  train={"checkpoint_every": 2, "log_every": 1})
    config.save(tmp_path / "config.json")
    out = str(tmp_path / "run")
    rc, err = cli(["--train", corpus, "--out", out, "--config", str(tmp_path / "config.json")], capsys)
    assert rc == 0, err
    return corpus, out


def test_a_refused_resume_leaves_the_run_directory_as_it_was(run_dir, capsys):
    corpus, out = run_dir
    saved = os.path.join(out, "pretrain_config.json")
    before = open(saved, "rb").read()
    listing = sorted(os.listdir(out)), sorted(os.listdir(os.path.join(out, "checkpoints")))
    rc, err = cli(["--train", corpus, "--out", out, "--resume", "--max-steps", "6", "--batch-size", "16"], capsys)
    assert rc == 2 and "--resume cannot change data.batch_size (data.batch_size: 4 in the checkpoint, 16 now" in err
    assert len(err.strip().splitlines()) == 1
    rc, err = cli(["--train", corpus, "--out", out, "--resume", "--max-steps", "6",
                   "--set", "model.bilm.dim=32", "--set", "optim.optimizer=adagrad"], capsys)
    assert rc == 2 and "cannot change model.bilm.dim, optim.optimizer (" in err
    assert "model.bilm.dim: 16 in the checkpoint, 32 now" in err
    assert open(saved, "rb").read() == before  # byte-identical: a plain resume still works
    assert (sorted(os.listdir(out)), sorted(os.listdir(os.path.join(out, "checkpoints")))) == listing
    rc, err = cli(["--train", corpus, "--out", out, "--resume", "--max-steps", "6"], capsys)
    assert rc == 0, err
    assert ckpt.load_latest(out)["step"] == 6
    assert json.load(open(saved))["train"]["max_steps"] == 6  # the budget may change


def test_resume_applies_a_new_learning_rate(run_dir, capsys, caplog):
    corpus, out = run_dir
    with caplog.at_level("INFO", logger="pretrain.resume"):
        rc, err = cli(["--train", corpus, "--out", out, "--resume", "--max-steps", "6",
                       "--set", "optim.lr=0.003"], capsys)
    assert rc == 0, err
    assert "--resume at step 4: optim.lr 0.01 -> 0.003 (applied from this step on)" in caplog.text
    with open(os.path.join(out, "metrics.jsonl")) as f:
        lrs = {r["step"]: r["lr"] for r in map(json.loads, f) if "lr" in r}
    assert lrs == pytest.approx({1: 0.01, 2: 0.01, 3: 0.01, 4: 0.01, 5: 0.003, 6: 0.003})
    latest = ckpt.load_latest(out)
    assert latest["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.003)
    assert latest["config"]["optim"]["lr"] == 0.003


def test_resume_on_other_or_changed_text_is_refused(run_dir, capsys, tmp_path):
    corpus, out = run_dir
    other = write_lines(str(tmp_path / "other.txt"), toy_sentences(60, seed=1))
    rc, err = cli(["--train", other, "--out", out, "--resume", "--max-steps", "6"], capsys)
    assert rc == 2 and f"--resume --train: the run was trained on ['{corpus}'] but this command gives " \
                       f"['{other}']" in err and "--init" in err
    rc, err = cli(["--train", corpus, "--heldout", other, "--out", out, "--resume", "--max-steps", "6"], capsys)
    assert rc == 2 and "--resume --heldout: the run was trained on nothing" in err
    with open(corpus, "a") as f:
        f.write("one more line\n")
    rc, err = cli(["--train", corpus, "--out", out, "--resume", "--max-steps", "6"], capsys)
    assert rc == 2 and f"{corpus} (" in err and "changed since" in err
    assert ckpt.load_latest(out)["step"] == 4


def test_a_diverged_run_stops_with_the_last_good_checkpoint_as_the_latest(tmp_path, capsys):
    corpus = write_lines(str(tmp_path / "train.txt"), toy_sentences(60))
    out = str(tmp_path / "run")
    config = tiny_pretrain_config(optim={"optimizer": "adam", "lr": 0.01, "clip_norm": None},
                                  train={"max_steps": 40})
    config.save(tmp_path / "config.json")
    rc, err = cli(["--train", corpus, "--out", out, "--config", str(tmp_path / "config.json"),
                   "--checkpoint-every", "1", "--set", "optim.lr=1e9"], capsys)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    found = ckpt.list_checkpoints(out)
    step = int(lines[0].split("step ")[1].split(":")[0])  # the diverged step
    assert found, err
    assert found[-1][0] == step - 1 and f"the last good checkpoint is {found[-1][1]}" in lines[0]
    latest = ckpt.load_latest(out)
    assert latest["step"] == step - 1
    assert all(torch.isfinite(v).all() for v in latest["model"].values() if v.is_floating_point())
    model = ElmoBiLM.from_pretrained(out)  # the model files of the last checkpoint
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_full_disk_while_checkpointing_is_one_line(run_dir, capsys, monkeypatch):
    corpus, out = run_dir

    def no_space(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 part of a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed "
                           "writing file data/12: file write failed; unexpected pos 4096 vs 2048")

    monkeypatch.setattr(torch, "save", no_space)
    rc, err = cli(["--train", corpus, "--out", out, "--resume", "--max-steps", "6"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "step-000000006.pt: no space left on the device (" in err and "free in" in err
    monkeypatch.undo()
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [2, 4]
    assert not [f for f in os.listdir(os.path.join(out, "checkpoints")) if ".tmp." in f]


def test_orphaned_temporary_files_are_removed_at_the_next_start(run_dir, capsys):
    corpus, out = run_dir
    dead = 2 ** 22 + 12345  # above the kernel's default pid_max: no such process
    orphans = [os.path.join(out, "checkpoints", f"step-000000006.pt.tmp.{dead}"),
               os.path.join(out, f"elmo_weights.pt.tmp.{dead}")]
    for path in orphans:
        with open(path, "wb") as f:
            f.write(b"half")
    rc, err = cli(["--train", corpus, "--out", out, "--resume", "--max-steps", "6"], capsys)
    assert rc == 0, err
    assert not any(os.path.exists(p) for p in orphans)


def test_bytes_that_are_not_utf8_are_found_anywhere_in_the_file(tmp_path, caplog):
    import logging

    from pretrain.corpus import check_text_file

    path = tmp_path / "late.txt"
    good = ("a fine line of text with an é in it\n" * 3000).encode("utf-8")  # > 100 KiB
    path.write_bytes(good + b"caf\xe9 au lait\n" + b"ok \xef\xbf\xbd kept\n")
    assert len(good) > 64 * 1024
    with caplog.at_level(logging.WARNING, logger="pretrain.corpus"):
        assert check_text_file(str(path)) is True
    assert f"{path}: 1 byte(s) are not UTF-8 (the first on line 3001, column 4)" in caplog.text
    for chunk in (1, 5, 4096):  # the same answer wherever the pieces are cut
        from pretrain.corpus import _count_non_utf8

        assert _count_non_utf8(str(path), chunk) == (1, 3001, 4)
    path.write_bytes(good + bytes(range(128, 256)) * 40)
    with pytest.raises(ValueError, match=r"late.txt: \d+ bytes are not UTF-8 \(the first on line 3001, column 1\)"):
        check_text_file(str(path))


def test_budgets_of_zero_and_an_empty_heldout_file_get_their_own_messages(tmp_path, capsys):
    corpus = write_lines(str(tmp_path / "train.txt"), toy_sentences(30))
    out = str(tmp_path / "run")
    for flag in ("--epochs", "--max-steps", "--max-tokens"):
        rc, err = cli(["--train", corpus, "--out", out, flag, "0"], capsys)
        assert rc == 2 and "must be a number" in err and "got 0" in err, (flag, err)
    assert not os.path.exists(out)
    empty = tmp_path / "held.txt"
    empty.write_text("")
    rc, err = cli(["--train", corpus, "--heldout", str(empty), "--out", out, "--max-steps", "1"], capsys)
    assert rc == 2 and f"--heldout {empty}: every file is empty; give held-out text" in err
    blank = write_lines(str(tmp_path / "blank.txt"), ["", "   "])
    rc, err = cli(["--train", corpus, "--heldout", blank, "--out", out, "--max-steps", "1"], capsys)
    assert rc == 2 and f"--heldout {blank}: no held-out text (every line is blank)" in err


def test_weights_that_do_not_fit_the_model_are_one_line_on_resume(run_dir, capsys):
    corpus, out = run_dir
    path = ckpt.list_checkpoints(out)[-1][1]
    data = torch.load(path, weights_only=True)
    name = next(k for k, v in data["model"].items() if v.dim() == 2)
    data["model"][name] = torch.zeros(3, 3)  # a checkpoint edited by hand (or by another version)
    torch.save(data, path)
    rc, err = cli(["--train", corpus, "--out", out, "--resume", "--max-steps", "6"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{path}: its weights do not fit the model of the run's configuration (" in err
    assert "size mismatch" in err


def test_a_lone_carriage_return_does_not_split_a_line(tmp_path):
    """Lines end at \\n only, on every reading path (in memory, streaming, prepared): a lone \\r
    stays inside its line (one sentence, later lines keep their places), while \\r\\n (and a \\r
    ending the file) is one line break, so a CRLF file reads as its LF twin, held-out hash included."""
    import numpy as np

    from pretrain.corpus import StreamingCorpus, load_corpus
    from pretrain.prepare import prepare
    from pretrain.prepared import PreparedCorpus
    from pretrain.vocab import WordTable

    lines = toy_sentences(40, seed=5)
    lines[10] = "left half\rright half ."
    path = tmp_path / "cr.txt"
    path.write_bytes(("\n".join(lines) + "\n").encode())
    raw = path.read_bytes()
    assert raw.count(b"\n") == 40 and raw.count(b"\r") == 1

    def sentences(corpus, table):
        return [[table.words[t] for t in corpus[i]] for i in range(len(corpus))]

    table = WordTable()
    train, held = load_corpus([str(path)], None, table, "whitespace", 0.0)
    got = sentences(train, table)
    assert len(got) == raw.count(b"\n") and len(held) == 0
    assert got[10] == ["left", "half", "right", "half", "."]
    assert got[11] == lines[11].split() and got[-1] == lines[-1].split()  # later lines not shifted

    stream_table = WordTable()
    stream = StreamingCorpus([str(path)], stream_table, "whitespace", 0.0, shuffle_buffer=8)
    assert stream.scan(None)[2] == 40
    streamed = [[stream_table.words[t] for t in s] for s in stream.sentences(epoch=0, seed=1)]
    assert sorted(streamed) == sorted(got)

    prepare([str(path)], str(tmp_path / "prep"), shard_bytes=200)  # several shards
    corpus = PreparedCorpus(str(tmp_path / "prep"))
    p_train, _, _ = corpus.split(0.0)
    assert sentences(p_train, corpus.word_table()) == got

    # CRLF line ends (the last line ended by a bare \r) read as the LF file, on both sides of a split.
    lf = write_lines(str(tmp_path / "lf.txt"), toy_sentences(200, seed=6))
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(open(lf, "rb").read().replace(b"\n", b"\r\n")[:-1])
    for fraction in (0.0, 0.3):
        a_table, b_table = WordTable(), WordTable()
        a = load_corpus([lf], None, a_table, "whitespace", fraction)
        b = load_corpus([str(crlf)], None, b_table, "whitespace", fraction)
        assert a_table.words == b_table.words and "\r" not in "".join(b_table.words)
        assert len(b[1]) > 0 if fraction else len(b[1]) == 0
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.ids, y.ids)
            np.testing.assert_array_equal(x.offsets, y.offsets)
    prepare([str(crlf)], str(tmp_path / "prep_crlf"), shard_bytes=300)
    prepared = PreparedCorpus(str(tmp_path / "prep_crlf"))
    for x, y in zip(prepared.split(0.3)[:2], a):  # a: the LF file at fraction 0.3
        assert sentences(x, prepared.word_table()) == sentences(y, a_table)


def test_a_byte_order_mark_starting_a_file_is_not_part_of_the_first_word(tmp_path):
    """A file that starts with a UTF-8 byte-order mark (Notepad, Excel) reads exactly as the same
    file without it on every reading path (in memory, streaming, prepared), held-out split
    included; a U+FEFF inside a line, or starting a later line, is text and stays."""
    import numpy as np

    from pretrain.corpus import StreamingCorpus, check_heldout, load_corpus
    from pretrain.prepare import prepare
    from pretrain.prepared import PreparedCorpus
    from pretrain.vocab import Vocabulary, WordTable

    lines = toy_sentences(120, seed=7)
    lines[5] = "zero\ufeffwidth joins inside ."
    lines[9] = "\ufeffmarked later line ."
    plain = write_lines(str(tmp_path / "plain.txt"), lines)
    marked = tmp_path / "marked.txt"
    marked.write_bytes(b"\xef\xbb\xbf" + open(plain, "rb").read())
    first = lines[0].split()[0]

    def sentences(corpus, table):
        return [[table.words[t] for t in corpus[i]] for i in range(len(corpus))]

    for fraction in (0.0, 0.3):
        a_table, b_table = WordTable(), WordTable()
        a = load_corpus([plain], None, a_table, "whitespace", fraction)
        b = load_corpus([str(marked)], None, b_table, "whitespace", fraction)
        assert b_table.words == a_table.words
        assert (len(b[1]) > 0) == (fraction > 0)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.ids, y.ids)
            np.testing.assert_array_equal(x.offsets, y.offsets)
        got = sentences(b[0], b_table) + sentences(b[1], b_table)
        assert sorted(got) == sorted(line.split() for line in lines)
        assert "\ufeff" + first not in b_table.words
        assert "zero\ufeffwidth" in b_table.words and "\ufeffmarked" in b_table.words

        streams = []
        for path in (plain, str(marked)):
            table = WordTable()
            stream = StreamingCorpus([path], table, "whitespace", fraction, shuffle_buffer=8)
            stream.scan(None)
            streams.append([[table.words[t] for t in s] for s in stream.sentences(epoch=0, seed=1)])
        assert streams[1] == streams[0] and len(streams[0]) == len(a[0])
        assert sorted(streams[1]) == sorted(sentences(a[0], a_table))

    for name, path in (("plain", plain), ("marked", str(marked))):
        prepare([path], str(tmp_path / f"prep_{name}"), shard_bytes=300)  # several shards
    for npy in ("tokens.npy", "offsets.npy", "line_hash.npy", "words.txt", "counts.npy", "chars.npy"):
        plain_bytes = (tmp_path / "prep_plain" / npy).read_bytes()
        assert (tmp_path / "prep_marked" / npy).read_bytes() == plain_bytes, npy
    prepared = PreparedCorpus(str(tmp_path / "prep_marked"))
    for x, y in zip(prepared.split(0.3)[:2], load_corpus([plain], None, a_table := WordTable(),
                                                         "whitespace", 0.3)):
        assert sentences(x, prepared.word_table()) == sentences(y, a_table)

    # A --heldout file holding only a mark and blank lines has no text; a --vocab file with a mark
    # is the same vocabulary.
    (tmp_path / "held.txt").write_bytes(b"\xef\xbb\xbf\n\n")
    with pytest.raises(ValueError, match="no held-out text"):
        check_heldout([str(tmp_path / "held.txt")])
    (tmp_path / "vocab.txt").write_text("<S>\n</S>\n<UNK>\nthe\n", encoding="utf-8-sig")
    assert Vocabulary.load(tmp_path / "vocab.txt").words == ["<S>", "</S>", "<UNK>", "the"]

"""A prepared corpus (elmo-prepare) reads as the raw text reads: the same lines, types, batches and
loss curve; workers and an interrupted preparation give identical files; stale sources named."""

import logging
import os
import random
from collections import Counter

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pretrain.prepare as P
from pretrain.batches import SentenceBatcher, WindowBatcher
from pretrain.corpus import load_corpus
from pretrain.prepare import main, prepare
from pretrain.prepared import PreparedCorpus, StalePreparationError, vocabulary_from_counts
from pretrain.run import run
from pretrain.vocab import Vocabulary, WordTable
from pretrain_util import single_thread, tiny_pretrain_config, toy_sentences, write_lines  # noqa: F401


def awkward_files(tmp_path) -> list[str]:
    """Two files with what real text holds: blank lines, CRLF and lone CR, a form feed and other
    Unicode spaces inside a line, a byte-order mark, a few non-UTF-8 bytes, repeated lines."""
    lines = toy_sentences(200, seed=1)
    a = tmp_path / "src" / "a.txt"
    a.parent.mkdir(parents=True, exist_ok=True)
    body = "\ufeff" + "\n".join(lines[:100]) + "\n\n   \nthe cat\x0csees\u00a0it .\r\nrepeat me .\rrepeat me .\n"
    a.write_bytes(body.encode("utf-8") + b"caf\xe9 ol\xe9 \xff\xfe .\n" + "\n".join(lines[100:]).encode())
    b = tmp_path / "src" / "sub" / "b.txt"
    b.parent.mkdir(parents=True, exist_ok=True)
    b.write_text("<S> a literal boundary </S> <UNK> .\n\u00fcber caf\u00e9 na\u00efve .\n\t\x0b \x1f\n"
                 "tab\tsep\x0bvt\x1funit\x1c .  \n" * 3, encoding="utf-8")  # ASCII spaces only
    return [str(tmp_path / "src")]


def words_of(sentences, table):
    return [[table.words[t] for t in sentences[i]] for i in range(len(sentences))]


def test_prepared_corpus_equals_the_raw_reading(tmp_path, caplog):
    src = awkward_files(tmp_path)
    with caplog.at_level(logging.WARNING):
        manifest = prepare(src, str(tmp_path / "c"), shard_bytes=300)  # many shards
    assert "not UTF-8" in caplog.text
    assert len(manifest["sources"]) == 2 and manifest["tokenizer"] == "whitespace"
    corpus = PreparedCorpus(str(tmp_path / "c"))
    for fraction in (0.2, 0.02, 0.0):  # 0.02: the stored held-out counts; 0.2: counted on demand
        raw_table = WordTable()
        raw_train, raw_held = load_corpus(src, None, raw_table, "whitespace", fraction)
        train, held, counts = corpus.split(fraction)
        table = corpus.word_table()
        assert table.words == raw_table.words  # the same type ids, in order of first appearance
        np.testing.assert_array_equal(table.chars, raw_table.chars[: len(table)])
        assert (len(train), len(held), train.num_tokens, held.num_tokens) == \
            (len(raw_train), len(raw_held), raw_train.num_tokens, raw_held.num_tokens)
        for i in range(len(raw_train)):
            np.testing.assert_array_equal(train[i], raw_train[i])
        for i in range(len(raw_held)):
            np.testing.assert_array_equal(held[i], raw_held[i])
        raw_counts = raw_table.counts([raw_train.ids])
        assert {table.words[t]: int(n) for t, n in enumerate(counts) if n} == dict(raw_counts)
        alpha = corpus._load(P.ALPHA)
        for max_size, min_count in ((None, 1), (12, 1), (None, 3), (7, 2)):
            assert vocabulary_from_counts(table, counts, alpha, max_size, min_count) == \
                Vocabulary.from_counts(raw_counts, max_size, min_count)
    assert ["the", "cat", "sees", "it", "."] in words_of(corpus.split(0.0)[0], table)  # \x0c, \xa0 split
    assert any(w.startswith("caf\ufffd") for w in table.words)


def test_vocabulary_from_counts_equals_vocabulary_from_a_counter():
    rng = random.Random(0)
    words = ["", "<S>", "</S>"] + [f"w{rng.randrange(10**6)}x{i}" for i in range(400)] + ["<UNK>"]
    table = WordTable.from_types(words)
    counts = np.array([0, 5, 5] + [rng.choice([1, 1, 2, 3, 3, 7, 40]) for _ in range(400)] + [9])
    alpha = np.empty(len(words), np.int32)
    alpha[sorted(range(len(words)), key=words.__getitem__)] = np.arange(len(words))
    counter = Counter({w: int(n) for w, n in zip(words, counts) if n})
    for max_size, min_count in ((None, 1), (50, 1), (None, 3), (100, 2), (3, 1)):
        assert vocabulary_from_counts(table, counts, alpha, max_size, min_count) == \
            Vocabulary.from_counts(counter, max_size, min_count)


def _losses(config, train, out):
    losses = {}

    def callback(trainer, metrics):
        losses[metrics["step"]] = metrics["loss"]

    summary = run(config, train, out, callback=callback)
    return losses, summary


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("mode", ["window", "sentence"])
def test_same_batches_and_loss_curve_as_the_raw_text(tmp_path, mode):
    text = write_lines(str(tmp_path / "train.txt"), toy_sentences(150))
    config = lambda prep: tiny_pretrain_config(  # noqa: E731
        data={"batch_mode": mode, "batch_size": 3, "window": 5, "heldout_fraction": 0.1,
              "prepare": prep, "max_vocab_size": 20},
        optim={"dropout": 0.1}, train={"max_steps": 8, "log_every": 1, "eval_every": 4})
    raw, raw_summary = _losses(config(False), [text], str(tmp_path / "raw"))
    implicit, summary = _losses(config(True), [text], str(tmp_path / "implicit"))
    assert os.path.isfile(tmp_path / "implicit" / "corpus" / "manifest.json")
    assert not os.path.exists(tmp_path / "raw" / "corpus")
    prepare([text], str(tmp_path / "prepared"), heldout_fraction=0.0)  # another stored fraction
    explicit, _ = _losses(config(True), [str(tmp_path / "prepared")], str(tmp_path / "explicit"))
    assert sorted(raw) == list(range(1, 9))
    for step in raw:
        assert abs(raw[step] - implicit[step]) < 1e-6 and abs(raw[step] - explicit[step]) < 1e-6
    assert summary["heldout"] == pytest.approx(raw_summary["heldout"], rel=1e-6)
    assert (tmp_path / "raw" / "vocab.txt").read_text() == (tmp_path / "explicit" / "vocab.txt").read_text()

    # The batches themselves, tensor for tensor, across an epoch boundary.
    raw_table = WordTable()
    raw_train, _ = load_corpus([text], None, raw_table, "whitespace", 0.1)
    corpus = PreparedCorpus(str(tmp_path / "prepared"))
    train, _, counts = corpus.split(0.1)
    table = corpus.word_table()
    vocab = Vocabulary.from_counts(raw_table.counts([raw_train.ids]), 20)
    raw_table.set_vocab(vocab)
    table.set_vocab(vocab)
    make = (lambda c, t: WindowBatcher(c, t, 3, 5, seed=2)) if mode == "window" else \
        (lambda c, t: SentenceBatcher(c, t, 3, 200, seed=2))
    a, b = make(raw_train, raw_table), make(train, table)
    for _ in range(100 if mode == "window" else 60):
        for x, y in zip(a.next_batch(), b.next_batch()):
            assert torch.equal(x, y)
    assert a.state_dict() == b.state_dict() and a.state_dict()["epoch"] >= 1


def _tree_bytes(path) -> dict:
    out = {}
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), "rb") as f:
            out[name] = f.read()
    return out


def test_workers_and_an_interrupted_preparation_give_identical_files(tmp_path, monkeypatch):
    src = awkward_files(tmp_path)
    write_lines(str(tmp_path / "src" / "c.txt"), toy_sentences(400, seed=7))
    prepare(src, str(tmp_path / "one"), shard_bytes=700)
    want = _tree_bytes(tmp_path / "one")
    assert set(want) == {P.MANIFEST, *P._FILES}  # shards and plan removed when complete
    prepare(src, str(tmp_path / "two"), workers=2, shard_bytes=700)
    assert _tree_bytes(tmp_path / "two") == want
    monkeypatch.setattr(P, "_PANDAS_BYTES", 0)  # the pandas.factorize path of corpora >= 48 MiB
    prepare(src, str(tmp_path / "pandas"), workers=2, shard_bytes=700)
    assert _tree_bytes(tmp_path / "pandas") == want
    monkeypatch.undo()

    real, calls = P._prepare_shard, []

    def dies_on_the_fourth(task):
        calls.append(task)
        if len(calls) == 4:
            raise KeyboardInterrupt  # killed part-way
        return real(task)

    monkeypatch.setattr(P, "_prepare_shard", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        prepare(src, str(tmp_path / "killed"), shard_bytes=700)
    assert sorted(os.listdir(tmp_path / "killed" / P.SHARDS)) == [f"shard-{k:06d}.npz" for k in range(3)]
    with open(tmp_path / "killed" / P.SHARDS / "shard-000003.npz.tmp.999999999.npz", "wb") as f:
        f.write(b"half a shard")  # a temporary file of a dead writer
    with pytest.raises(ValueError, match="did not finish"):
        PreparedCorpus(str(tmp_path / "killed"))
    calls.clear()
    monkeypatch.setattr(P, "_prepare_shard", lambda task: calls.append(task) or real(task))
    prepare(src, str(tmp_path / "killed"), shard_bytes=700)
    n_shards = len(P._plan_shards(P.resolve_files(src), 700))
    assert len(calls) == n_shards - 3  # the finished shards were kept
    assert _tree_bytes(tmp_path / "killed") == want


def test_a_changed_source_is_named(tmp_path, capsys, caplog):
    text = write_lines(str(tmp_path / "train.txt"), toy_sentences(60))
    other = write_lines(str(tmp_path / "more.txt"), toy_sentences(20, seed=4))
    out = str(tmp_path / "c")
    prepare([text, other], out)
    PreparedCorpus(out)  # fresh: fine
    st = os.stat(text)
    os.utime(text, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))  # same size, touched
    with pytest.raises(StalePreparationError, match=r"is stale: .*train\.txt changed after it was prepared"):
        PreparedCorpus(out)
    from pretrain.cli import main as pretrain_main

    assert pretrain_main(["--train", out, "--out", str(tmp_path / "run"), "--max-steps", "1",
                          "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "train.txt changed after it was prepared" in err and "elmo-prepare" in err
    # Preparing again picks up the change; a deleted source only warns.
    with open(text, "a") as f:
        f.write("a new line here .\n")
    assert prepare([text, other], out)["num_sentences"] == 81
    os.remove(other)
    with caplog.at_level(logging.WARNING):
        assert PreparedCorpus(out).num_sentences == 81
    assert "more.txt no longer exists" in caplog.text


@pytest.mark.usefixtures("single_thread")
def test_a_resumed_run_refuses_a_changed_source(tmp_path):
    text = write_lines(str(tmp_path / "train.txt"), toy_sentences(60))
    config = tiny_pretrain_config(train={"max_steps": 2, "checkpoint_every": 1})
    run(config, [text], str(tmp_path / "run"))
    st = os.stat(text)
    os.utime(text, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    with pytest.raises(StalePreparationError, match="train.txt changed"):
        run(config.with_override("train.max_steps=3"), [text], str(tmp_path / "run"), resume=True)


def _ddp_reader(rank, world, corpus_dir, tmp):
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        corpus = PreparedCorpus(corpus_dir)
        train, _, _ = corpus.split(0.1)
        mine = [(int(i), tuple(train[int(i)].tolist())) for i in train.order(3, 11, rank, world)]
        got = [list(s) for s in train.sentences(3, 11, rank, world)]
        assert got == [list(s) for _, s in mine]
        everyone = [None] * world
        dist.all_gather_object(everyone, mine)
        if rank == 0:
            torch.save(everyone, f"{tmp}/shares.pt")
    finally:
        dist.destroy_process_group()


def test_two_ddp_processes_read_disjoint_sentences_that_make_up_the_epoch(tmp_path):
    text = write_lines(str(tmp_path / "train.txt"), toy_sentences(301, seed=5))
    prepare([text], str(tmp_path / "c"))
    mp.start_processes(_ddp_reader, args=(2, str(tmp_path / "c"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")  # no torch import per process: seconds, not tens
    shares = torch.load(tmp_path / "shares.pt", weights_only=False)
    ids = [{i for i, _ in share} for share in shares]
    train, _, _ = PreparedCorpus(str(tmp_path / "c")).split(0.1)
    assert not ids[0] & ids[1] and ids[0] | ids[1] == set(range(len(train)))
    assert abs(len(ids[0]) - len(ids[1])) <= 1
    table = WordTable()
    raw_train, _ = load_corpus([text], None, table, "whitespace", 0.1)
    assert sorted(s for share in shares for _, s in share) == \
        sorted(tuple(raw_train[i].tolist()) for i in range(len(raw_train)))


def test_bad_files_are_handled_as_the_raw_path_handles_them(tmp_path, caplog):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    words = ["wd%04d" % (i % 997) for i in range(1_450_000)]
    big = write_lines(str(tmp_path / "big.txt"), ["short line .", " ".join(words), "after it ."])
    assert os.path.getsize(big) > 10_000_000  # a 10 MB line
    with caplog.at_level(logging.WARNING):
        prepare([big, str(empty)], str(tmp_path / "c"), shard_bytes=1 << 20)
    assert "empty file, skipped" in caplog.text
    train, _, _ = PreparedCorpus(str(tmp_path / "c")).split(0.0)
    table = WordTable()
    raw_train, _ = load_corpus([big, str(empty)], None, table, "whitespace", 0.0)
    assert len(train) == len(raw_train) == 3 and train.num_tokens == raw_train.num_tokens
    for i in range(3):
        np.testing.assert_array_equal(train[i], raw_train[i])
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)))
    for read in (lambda: prepare([str(junk)], str(tmp_path / "j")),
                 lambda: load_corpus([str(junk)], None, WordTable(), "whitespace", 0.0)):
        with pytest.raises(ValueError, match="junk.bin: looks like a binary file"):
            read()
    with pytest.raises(ValueError, match="every file is empty"):
        prepare([str(empty)], str(tmp_path / "e"))
    blank = write_lines(str(tmp_path / "blank.txt"), ["", "   ", "\t"])
    with pytest.raises(ValueError, match="no training text"):
        prepare([blank], str(tmp_path / "b"))


def test_elmo_prepare_command(tmp_path, capsys):
    text = write_lines(str(tmp_path / "t.txt"), ["He said: \"it's 3.5%\", e-mail U.S. officials ..."] * 4)
    out = str(tmp_path / "c")
    assert main([text, "--out", out, "--tokenizer", "punct", "--workers", "2", "--no-progress",
                 "--log-level", "WARNING"]) == 0
    printed = capsys.readouterr().out
    assert "56 tokens in 4 lines" in printed and f"elmo-pretrain --train {out}" in printed
    corpus = PreparedCorpus(out)
    assert corpus.tokenizer == "punct" and corpus.num_tokens == 56
    assert [corpus.word_table().words[t] for t in corpus.sentence(0)][:6] == \
        ["He", "said", ":", '"', "it", "'s"]
    for argv, message in (([str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x")], "no such file"),
                          ([text, "--out", text], "exists and is not a folder"),
                          ([text, "--out", str(tmp_path)], "not empty and not a prepared corpus"),
                          ([text, "--out", out, "--workers", "0"], "workers must be >= 1")):
        assert main(argv + ["--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and err.startswith("elmo-prepare: error:") and "\n" not in err
    with pytest.raises(ValueError, match="not a prepared corpus"):
        PreparedCorpus(str(tmp_path))


def test_a_preparation_killed_with_sigkill_resumes_byte_identical(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    text = write_lines(str(tmp_path / "t.txt"), toy_sentences(6000, seed=9))  # 150 KB: ~150 shards
    prepare([text], str(tmp_path / "want"), shard_bytes=1024)
    out = str(tmp_path / "c")
    cmd = [sys.executable, "-m", "pretrain.prepared", text, "--out", out, "--shard-mb", str(1024 / 2**20),
           "--no-progress", "--log-level", "WARNING"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    shards = os.path.join(out, P.SHARDS)
    finished = lambda: [n for n in os.listdir(shards) if ".tmp." not in n]  # noqa: E731
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(shards) and len(finished()) >= 20:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the preparation ended before it could be killed"
    assert not os.path.exists(os.path.join(out, P.MANIFEST))
    assert 20 <= len(finished()) < len(P._plan_shards([text], 1024))
    assert main([text, "--out", out, "--shard-mb", str(1024 / 2**20), "--no-progress"]) == 0
    assert _tree_bytes(out) == _tree_bytes(tmp_path / "want")


@pytest.mark.usefixtures("single_thread")
def test_a_prepared_corpus_brings_its_tokenizer_and_resumes(tmp_path, caplog):
    text = write_lines(str(tmp_path / "t.txt"), ["It's 3.5% of U.S. sales, isn't it?"] * 30 + toy_sentences(60))
    prepare([text], str(tmp_path / "c"), tokenizer="punct")
    out = str(tmp_path / "run")
    from pretrain.cli import main as pretrain_main

    args = ["--train", str(tmp_path / "c"), "--out", out, "--preset", "tiny", "--set", "model.bilm.dim=16",
            "--set", "model.bilm.projection_dim=8", "--batch-size", "2", "--num-samples", "8",
            "--checkpoint-every", "1", "--no-progress", "--log-level", "WARNING"]
    with caplog.at_level(logging.WARNING):
        assert pretrain_main(args + ["--max-steps", "2"]) == 0
    assert "prepared with the punct tokenizer" in caplog.text
    from pretrain.config import PretrainConfig

    assert PretrainConfig.load(os.path.join(out, "pretrain_config.json")).data.tokenizer == "punct"
    vocab = open(os.path.join(out, "vocab.txt")).read().split("\n")
    assert "'s" in vocab and "n't" in vocab
    assert pretrain_main(args + ["--max-steps", "3", "--resume"]) == 0  # the saved config agrees


def test_a_hub_dataset_is_prepared_like_the_same_lines_in_a_file(tmp_path, monkeypatch):
    lines = toy_sentences(80, seed=2) + ["", "  "]
    text = write_lines(str(tmp_path / "t.txt"), lines)
    prepare([text], str(tmp_path / "file"))
    opened = []

    def fake_open_text(specs, streaming, text_field="text"):  # what datasets streams from the hub
        opened.append((list(specs), streaming, text_field))
        return ({"text": line} for line in lines)  # an iterable dataset (streaming)

    monkeypatch.setattr(P, "open_text", fake_open_text)
    manifest = prepare(["someone/corpus"], str(tmp_path / "hub"), text_field="text")
    assert manifest["hub"] == {"name": "someone/corpus", "text_field": "text"} and manifest["sources"] == []
    assert opened[0] == (["someone/corpus"], True, "text")
    for name in (P.TOKENS, P.OFFSETS, P.HASHES, P.WORDS, P.COUNTS, P.CHARS):
        assert (tmp_path / "hub" / name).read_bytes() == (tmp_path / "file" / name).read_bytes(), name
    assert prepare(["someone/corpus"], str(tmp_path / "hub")) == manifest  # the same name: up to date
    monkeypatch.undo()
    with pytest.raises(ValueError, match="loading it as a hub dataset failed"):
        prepare(["nobody/no-such-corpus-here"], str(tmp_path / "x"))


@pytest.mark.usefixtures("single_thread")
def test_a_heldout_file_beside_a_prepared_corpus(tmp_path):
    text = write_lines(str(tmp_path / "train.txt"), toy_sentences(100))
    held = write_lines(str(tmp_path / "held.txt"), toy_sentences(12, seed=8) + ["an unseen zebra ."])
    prepare([text], str(tmp_path / "c"))
    config = lambda prep: tiny_pretrain_config(  # noqa: E731
        data={"prepare": prep, "heldout_fraction": 0.3}, train={"max_steps": 3, "log_every": 1})
    losses = {}
    summaries = {}
    for name, train, prep in (("raw", [text], False), ("prepared", [str(tmp_path / "c")], True)):
        got = {}
        summaries[name] = run(config(prep), train, str(tmp_path / name), heldout=[held],
                              callback=lambda t, m, got=got: got.__setitem__(m["step"], m["loss"]))
        losses[name] = got
    assert losses["raw"] == pytest.approx(losses["prepared"], abs=1e-6) and len(losses["raw"]) == 3
    assert summaries["raw"]["train_lines"] == summaries["prepared"]["train_lines"] == 100  # no fraction
    assert summaries["raw"]["heldout"] == pytest.approx(summaries["prepared"]["heldout"], rel=1e-6)

import logging
import os
from collections import Counter

import numpy as np
import pytest

from elmo.chars import word_to_char_ids
from pretrain.corpus import (StreamingCorpus, check_text_file, get_tokenizer, is_heldout, load_corpus,
                             resolve_files)
from pretrain.vocab import NO_TARGET, UNK_ID, Vocabulary, WordTable
from pretrain_util import toy_sentences, write_lines


def test_punct_tokenizer_splits_punctuation_and_clitics():
    tok = get_tokenizer("punct")
    assert tok('He said "It\'s $7,500 (3.5%)," e-mail U.S. officials... don\'t') == [
        "He", "said", '"', "It", "'s", "$", "7,500", "(", "3.5", "%", ")", ",", '"', "e-mail",
        "U.S.", "officials", "...", "do", "n't"]
    assert get_tokenizer("whitespace")("a  b,c\t.") == ["a", "b,c", "."]
    with pytest.raises(ValueError, match="valid: whitespace, punct"):
        get_tokenizer("spacy")


def test_resolve_files_takes_files_folders_and_globs(tmp_path):
    a = write_lines(str(tmp_path / "d" / "a.txt"), ["x"])
    b = write_lines(str(tmp_path / "d" / "sub" / "b.txt"), ["y"])
    c = write_lines(str(tmp_path / "c.txt"), ["z"])
    assert resolve_files([str(tmp_path / "d")]) == [a, b]
    assert resolve_files([str(tmp_path / "*.txt"), c]) == [c]
    with pytest.raises(FileNotFoundError, match="no such file, folder or glob"):
        resolve_files([str(tmp_path / "missing.txt")])


def test_check_text_file(tmp_path, caplog):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert check_text_file(str(empty)) is False
    assert "empty file, skipped" in caplog.text
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)))
    with pytest.raises(ValueError, match="junk.bin: looks like a binary file"):
        check_text_file(str(junk))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("price \u00a35 today\n".encode("latin-1") * 3)
    with caplog.at_level(logging.WARNING):
        assert check_text_file(str(latin)) is True
    assert "3 byte(s)" in caplog.text and "U+FFFD" in caplog.text
    noisy = tmp_path / "noisy.txt"
    noisy.write_bytes(bytes(range(128, 256)) * 40)  # no NUL, but not UTF-8 at all
    with pytest.raises(ValueError, match="not UTF-8"):
        check_text_file(str(noisy))


def test_heldout_split_is_a_stable_fraction_of_lines():
    lines = [f"line number {i}" for i in range(4000)]
    held = [line for line in lines if is_heldout(line, 0.1)]
    assert 320 < len(held) < 480
    assert held == [line for line in lines if is_heldout(line, 0.1)]  # deterministic
    assert not any(is_heldout(line, 0.0) for line in lines)


def test_load_corpus_encodes_lines_and_splits(tmp_path):
    lines = toy_sentences(300)
    path = write_lines(str(tmp_path / "t.txt"), lines[:150] + ["", "   "] + lines[150:], newline_at_end=False)
    table = WordTable()
    train, held = load_corpus([path], None, table, "whitespace", 0.2)
    n_held = sum(is_heldout(line, 0.2) for line in lines)
    assert len(train) + len(held) == 300 and len(held) == n_held and 0 < n_held < 100
    assert [table.words[t] for t in train[0]] == next(ln for ln in lines if not is_heldout(ln, 0.2)).split()
    assert train.num_tokens == sum(len(ln.split()) for ln in lines if not is_heldout(ln, 0.2))
    # A held-out file instead of a fraction: every training line is used.
    hpath = write_lines(str(tmp_path / "h.txt"), ["the cat sees it ."])
    train2, held2 = load_corpus([path], [hpath], WordTable(), "whitespace", 0.2)
    assert (len(train2), len(held2)) == (300, 1)


def test_a_one_megabyte_line_and_an_empty_file_are_handled(tmp_path):
    words = ["wd%04d" % (i % 997) for i in range(150_000)]
    big = write_lines(str(tmp_path / "big.txt"), [" ".join(words)])
    assert os.path.getsize(big) > 1_000_000
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    table = WordTable()
    train, _ = load_corpus([big, str(empty)], None, table, "whitespace", 0.0)
    assert len(train) == 1 and train.num_tokens == 150_000
    with pytest.raises(ValueError, match="every file is empty"):
        load_corpus([str(empty)], None, WordTable(), "whitespace", 0.0)


def test_vocabulary_order_save_load(tmp_path):
    counts = Counter({"b": 5, "a": 5, "c": 9, "d": 1, "<S>": 100})
    v = Vocabulary.from_counts(counts)
    assert v.words == ["<S>", "</S>", "<UNK>", "c", "a", "b", "d"]  # by count, ties alphabetical
    assert Vocabulary.from_counts(counts, max_size=5).words == ["<S>", "</S>", "<UNK>", "c", "a"]
    assert Vocabulary.from_counts(counts, min_count=5).words[3:] == ["c", "a", "b"]
    v.save(tmp_path / "vocab.txt")
    assert (tmp_path / "vocab.txt").read_text().splitlines() == v.words
    assert Vocabulary.load(tmp_path / "vocab.txt") == v
    assert v.id("zzz") == UNK_ID and v.id("c") == 3
    (tmp_path / "bad.txt").write_text("<S>\n</S>\n<UNK>\ntwo words\n")
    with pytest.raises(ValueError, match="one word per line"):
        Vocabulary.load(tmp_path / "bad.txt")


def test_word_table_keeps_characters_of_unknown_words():
    table = WordTable(Vocabulary(["<S>", "</S>", "<UNK>", "cat"]))
    ids = table.encode(["cat", "dog", "cat"])
    assert ids[0] == ids[2] != ids[1]
    assert table.targets[ids].tolist() == [3, UNK_ID, 3]
    assert table.chars[ids[1]].tolist() == word_to_char_ids("dog")  # OOV: still its characters
    assert table.targets[0] == NO_TARGET and not table.chars[0].any()  # type 0 = padding
    for _ in range(2000):  # growth keeps earlier rows
        table.add(f"w{_}")
    assert table.chars[ids[1]].tolist() == word_to_char_ids("dog")


def test_streaming_corpus_matches_the_in_memory_one(tmp_path):
    lines = toy_sentences(120, seed=3)
    path = write_lines(str(tmp_path / "t.txt"), lines)
    mem_table, stream_table = WordTable(), WordTable()
    train, held = load_corpus([path], None, mem_table, "whitespace", 0.1)
    stream = StreamingCorpus([path], stream_table, "whitespace", 0.1, shuffle_buffer=50)
    counts, n_tokens, n_sentences, held_ids = stream.scan(None)
    assert (n_tokens, n_sentences, len(held_ids)) == (train.num_tokens, len(train), len(held))
    assert counts == mem_table.counts([train.ids])
    got = [[stream_table.words[t] for t in s] for s in stream.sentences(epoch=0, seed=1)]
    want = [[mem_table.words[t] for t in train[i]] for i in range(len(train))]
    assert sorted(got) == sorted(want) and got != want  # the same sentences, shuffled
    again = [[stream_table.words[t] for t in s] for s in stream.sentences(epoch=0, seed=1, start=5)]
    assert again == got[5:]  # resuming skips what was consumed

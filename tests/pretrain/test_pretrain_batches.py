import torch

from elmo import batch_to_ids
from pretrain.batches import SentenceBatcher, WindowBatcher, eval_batches, pad_sentences
from pretrain.corpus import EncodedCorpus
from pretrain.vocab import NO_TARGET, Vocabulary, WordTable


def make_corpus(sentences, vocab_words=None):
    words = sorted({w for s in sentences for w in s})
    vocab = Vocabulary(["<S>", "</S>", "<UNK>"] + (vocab_words if vocab_words is not None else words))
    table = WordTable(vocab)
    return EncodedCorpus(table, [table.encode(s) for s in sentences]), table, vocab


def words_of(batch, table_words, row):
    return [table_words[i] for i in row]


def test_window_targets_by_hand():
    corpus, table, v = make_corpus([["a", "b", "c"], ["d", "e"]])
    batcher = WindowBatcher(corpus, table, batch_size=1, window=3, seed=0)
    first = [table.words[table.bos]] + [table.words[t] for t in corpus[int(corpus.order(0, 0)[0])]]
    assert first[:2] in (["<S>", "a"], ["<S>", "d"])
    corpus = EncodedCorpus(table, [corpus[int(i)] for i in corpus.order(0, 0)])  # make order explicit
    s0, s1 = [[table.words[t] for t in corpus[i]] for i in range(2)]
    stream = ["<S>"] + s0 + ["</S>", "<S>"] + s1 + ["</S>"]
    b1 = batcher.next_batch()
    b2 = batcher.next_batch()
    x1 = [b1.token_chars[i].tolist() for i in b1.tokens[0]]
    assert x1 == [batch_to_ids([[w]])[0, 0].tolist() for w in stream[:3]]
    # forward: x_t -> x_{t+1} (the last one from the next window); backward: x_t -> x_{t-1},
    # nothing at the window's first position and nothing across a sentence boundary.
    assert b1.forward_targets[0].tolist() == [v.id(w) for w in stream[1:4]]
    assert b1.backward_targets[0].tolist() == [NO_TARGET, v.id(stream[0]), v.id(stream[1])]
    w2 = stream[3:6]
    fwd2 = [NO_TARGET if w == "</S>" else v.id(n) for w, n in zip(w2, stream[4:7])]
    bwd2 = [NO_TARGET] + [NO_TARGET if w == "<S>" else v.id(p) for w, p in zip(w2[1:], stream[3:5])]
    assert b2.forward_targets[0].tolist() == fwd2
    assert b2.backward_targets[0].tolist() == bwd2


def decode(batch, table):
    """Batch -> words per row (padding left out)."""
    by_chars = {tuple(table.chars[t].tolist()): table.words[t] for t in range(1, len(table))}
    return [[by_chars[tuple(batch.token_chars[i].tolist())] for i in row if i >= 0]
            for row in batch.tokens]


def test_window_rows_are_continuous_streams_without_padding():
    sentences = [[f"w{i}"] * (1 + i % 4) for i in range(30)]
    corpus, table, _ = make_corpus(sentences)
    # One row: exactly the epoch's sentences in order, with boundaries, cut into windows.
    one = WindowBatcher(corpus, table, batch_size=1, window=5, seed=1)
    got = sum((decode(one.next_batch(), table)[0] for _ in range(20)), [])
    want = sum((["<S>"] + sentences[int(i)] + ["</S>"] for i in corpus.order(0, 1)), [])
    assert got == want[:100]
    # Three rows: each is whole sentences end to end, no padding; together they use every sentence.
    three = WindowBatcher(corpus, table, batch_size=3, window=5, seed=1)
    rows = [[] for _ in range(3)]
    for _ in range(30):  # the last sentences of epoch 0 are still in the rows when it ends
        b = three.next_batch()
        assert b.mask.all() and b.tokens.shape == (3, 5)
        for r, words in enumerate(decode(b, table)):
            rows[r] += words
    seen = []
    for row in rows:
        text = " ".join(row).split("</S>")
        for piece in text[:-1]:
            words = piece.split()
            assert words[0] == "<S>" and len(set(words[1:])) == 1
            seen.append(words[1])
    assert sorted(set(seen)) == sorted(f"w{i}" for i in range(30))


def test_window_batcher_resumes_exactly():
    corpus, table, _ = make_corpus([[f"t{i}", f"u{i % 3}"] for i in range(17)])
    a = WindowBatcher(corpus, table, batch_size=2, window=4, seed=5)
    for _ in range(7):  # crosses an epoch boundary
        a.next_batch()
    state = a.state_dict()
    b = WindowBatcher(corpus, table, batch_size=2, window=4, seed=5)
    b.load_state_dict(state)
    for _ in range(10):
        x, y = a.next_batch(), b.next_batch()
        for u, w in zip(x, y):
            assert torch.equal(u, w)
    assert a.epoch >= 1


def test_sentence_batches_pad_and_reset():
    corpus, table, v = make_corpus([["a", "b"], ["c"], ["d", "e", "f", "g", "h"]])
    b = pad_sentences([corpus[0], corpus[1]], table)
    assert b.tokens.shape == (2, 4) and b.mask.tolist() == [[True] * 4, [True] * 3 + [False]]
    assert b.forward_targets.tolist() == [[v.id("a"), v.id("b"), 1, -1], [v.id("c"), 1, -1, -1]]
    assert b.backward_targets.tolist() == [[-1, 0, v.id("a"), v.id("b")], [-1, 0, v.id("c"), -1]]
    assert torch.equal(b.char_ids()[1, :3], batch_to_ids([["<S>", "c", "</S>"]])[0])
    assert not b.char_ids()[1, 3].any()
    # Long sentences are cut into pieces of max_tokens, each with its own boundaries.
    batches = eval_batches(corpus, table, batch_size=8, max_tokens=2)
    assert sorted(int(m.sum()) for bt in batches for m in bt.mask) == [3, 3, 4, 4, 4]
    # every real token is a target once per direction, plus </S> forward and <S> backward
    assert sum(int((bt.forward_targets >= 0).sum()) for bt in batches) == 8 + 5
    assert sum(int((bt.backward_targets >= 0).sum()) for bt in batches) == 8 + 5


def test_sentence_batcher_covers_each_epoch_once_and_resumes():
    sentences = [[f"s{i}"] * (1 + i % 5) for i in range(23)]
    corpus, table, _ = make_corpus(sentences)
    SentenceBatcher.POOL_BATCHES = 2  # several pools per epoch
    try:
        a2 = SentenceBatcher(corpus, table, batch_size=3, max_tokens=50, seed=2)
        firsts = set()
        for _ in range(8):  # 23 sentences in batches of 3 = 8 batches in epoch 0
            firsts |= {words[1] for words in decode(a2.next_batch(), table)}
        assert len(firsts) == 23 and a2.epoch == 0
        for k in (0, 1, 3, 4):  # resume at the start, inside and at the end of a pool
            x = SentenceBatcher(corpus, table, batch_size=3, max_tokens=50, seed=2)
            for _ in range(k):
                x.next_batch()
            y = SentenceBatcher(corpus, table, batch_size=3, max_tokens=50, seed=2)
            y.load_state_dict(x.state_dict())
            for _ in range(6):
                for u, w in zip(x.next_batch(), y.next_batch()):
                    assert torch.equal(u, w)
    finally:
        SentenceBatcher.POOL_BATCHES = 50


def test_processes_read_disjoint_shards():
    corpus, table, _ = make_corpus([[f"x{i}"] for i in range(11)])
    parts = [set(corpus.order(3, 7, rank, 2).tolist()) for rank in range(2)]
    assert parts[0].isdisjoint(parts[1]) and parts[0] | parts[1] == set(range(11))

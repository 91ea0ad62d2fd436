"""DDP on CPU (gloo, 2 processes): after 3 steps the parameters equal those of one process that
trains on the combined batch; under ``run`` each process reads its own shard, only rank 0 writes."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pretrain.batches import WindowBatcher
from pretrain.config import PretrainConfig
from pretrain.corpus import EncodedCorpus
from pretrain.distributed import DistInfo
from pretrain.lm import BidirectionalLM
from pretrain.train import Trainer
from pretrain.vocab import Vocabulary, WordTable
from pretrain_util import ListBatcher, tiny_pretrain_config, toy_sentences, write_lines
from elmo.serialization import find_weights

ROWS = 4  # per process
STEPS = 3


def the_config() -> PretrainConfig:
    # Sampled softmax (the same negatives on every process), a clip that is active, no dropout
    # (its masks would differ between processes and the single one).
    return tiny_pretrain_config(data={"batch_size": ROWS, "window": 6}, softmax={"num_samples": 12},
                                optim={"dropout": 0.0, "clip_norm": 0.5})


def combined_batches():
    sentences = [s.split() for s in toy_sentences(200)]
    vocab = Vocabulary(["<S>", "</S>", "<UNK>"] + sorted({w for s in sentences for w in s}))
    table = WordTable(vocab)
    corpus = EncodedCorpus(table, [table.encode(s) for s in sentences])
    batcher = WindowBatcher(corpus, table, 2 * ROWS, 6, seed=0)
    return [batcher.next_batch() for _ in range(STEPS)], len(vocab)


def train(batches, vocab_size, info, overrides=()):
    config = the_config()
    for assignment in overrides:
        config = config.with_override(assignment)
    torch.manual_seed(0)
    lm = BidirectionalLM(config.model, vocab_size, config.softmax)
    trainer = Trainer(lm, ListBatcher(batches), config, STEPS, info=info)
    losses = [trainer.train_step(trainer.batcher.next_batch())["loss"] for _ in range(STEPS)]
    return lm, losses


def _worker(rank, world, tmp):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        info = DistInfo(rank, world, 0, torch.device("cpu"))
        batches, vocab_size = combined_batches()
        mine = [b.rows(rank * ROWS, (rank + 1) * ROWS) for b in batches]
        lm, losses = train(mine, vocab_size, info)
        if rank == 0:
            torch.save({"params": lm.state_dict(), "losses": losses}, f"{tmp}/ddp.pt")
        # The whole run under DDP: shards, a checkpoint gathered from both ranks, rank 0 writes.
        from pretrain.run import run

        config = the_config().with_override("train.checkpoint_every=2")
        summary = run(config, [f"{tmp}/train.txt"], f"{tmp}/run", info=info)
        torch.save(summary, f"{tmp}/summary{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_with_the_combined_batch(tmp_path):
    write_lines(str(tmp_path / "train.txt"), toy_sentences(100))
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)

    torch.set_num_threads(1)
    batches, vocab_size = combined_batches()
    lm, losses = train(batches, vocab_size, DistInfo())
    for a, b in zip(losses, ddp["losses"]):
        assert abs(a - b) < 1e-5
    for name, p in lm.state_dict().items():
        torch.testing.assert_close(ddp["params"][name], p, rtol=0, atol=1e-5, msg=name)
    start = {k: v for k, v in BidirectionalLM(the_config().model, vocab_size,
                                              the_config().softmax).state_dict().items()}
    assert any((start[k] - v).abs().max() > 1e-4 for k, v in lm.state_dict().items())  # it moved

    summaries = [torch.load(tmp_path / f"summary{r}.pt", weights_only=True) for r in range(2)]
    assert summaries[0]["world_size"] == 2 and summaries[0]["step"] == summaries[1]["step"] == 4
    assert summaries[0]["tokens"] == 4 * 2 * ROWS * 6  # tokens of both processes
    from pretrain.checkpoint import load_latest

    latest = load_latest(str(tmp_path / "run"))
    assert latest["step"] == 4 and len(latest["ranks"]) == 2
    rows0, rows1 = (r["data"]["rows"] for r in latest["ranks"])
    assert rows0 != rows1  # each process reads its own shard
    assert find_weights(tmp_path / "run") is not None


def _forward_worker(rank, world, tmp):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        batches, vocab_size = combined_batches()
        mine = [b.rows(rank * ROWS, (rank + 1) * ROWS) for b in batches]
        lm, losses = train(mine, vocab_size, DistInfo(rank, world, 0, torch.device("cpu")), FORWARD_ONLY)
        if rank == 0:
            torch.save({"params": lm.state_dict(), "losses": losses}, f"{tmp}/ddp.pt")
    finally:
        dist.destroy_process_group()


FORWARD_ONLY = ("train.directions=forward", "optim.input_dropout=false")


def test_forward_only_two_processes_equal_one(tmp_path):
    """train.directions=forward under DDP: the backward stack gets no gradient on any process
    (DDP is told to expect unused parameters) and the result is one process's on both shards."""
    mp.spawn(_forward_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    torch.set_num_threads(1)
    batches, vocab_size = combined_batches()
    lm, losses = train(batches, vocab_size, DistInfo(), FORWARD_ONLY)
    for a, b in zip(losses, ddp["losses"]):
        assert abs(a - b) < 1e-5
    torch.manual_seed(0)  # the initial weights of train()
    start = BidirectionalLM(the_config().model, vocab_size, the_config().softmax).state_dict()
    for name, p in lm.state_dict().items():
        torch.testing.assert_close(ddp["params"][name], p, rtol=0, atol=1e-5, msg=name)
        if ".backward_layers." in name:  # untrained, on every process
            assert torch.equal(ddp["params"][name], start[name]), name
    assert any((start[k] - v).abs().max() > 1e-4 for k, v in lm.state_dict().items())

"""Seconds per NER training epoch on CoNLL-2003 with the frozen ELMo recomputed vs. cached.

Recomputed: every batch runs the biLM (without gradients) before the head, as the original
training did. Cached: the layers of every sentence are computed once (timed separately), and
the epoch trains the head on them. Both epochs run the same ``tasks.train.train`` loop; the time
is its ``train_seconds`` (training only, without the dev evaluation).

    flock /tmp/bench.lock .venv/bin/python scripts/bench_tasks.py --model runs/main/lm --threads 2
    .venv/bin/python scripts/bench_tasks.py --preset small --max-sentences 500   # a quick check

With ``--epochs N`` each mode trains N epochs and the mean of epochs 2..N is reported beside the
first. ``--phases`` times each phase of the cached training step; ``--breakdown`` the head's
BiLSTM alone.
Without --model a randomly initialised ELMo of --preset size is used (speed does not depend on
the weights). Prints a table and, with --json, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from elmo import ElmoBiLM  # noqa: E402
from elmo.config import preset  # noqa: E402
from tasks import ner  # noqa: E402
from tasks.cache import LayerCache  # noqa: E402
from tasks.config import resolve_config  # noqa: E402
from tasks.data import BatchMaker, Vocabulary  # noqa: E402
from tasks.encoder import SequenceEncoder  # noqa: E402
from tasks.train import clip_grad_norm, make_adam, train  # noqa: E402

PHASES = ("batch", "encoder fwd", "BiLSTM fwd", "output+CRF fwd", "CRF+output bwd", "BiLSTM bwd",
          "encoder bwd", "clip", "Adam")


def build_head(cfg, bilm, train_data, cache):
    """A fresh NER model (seed 0), its batch maker and its labels, as the training CLI builds them."""
    torch.manual_seed(0)
    labels = ner.setup(train_data, cfg)
    words = Vocabulary.words([x.tokens for x in train_data], cfg.min_word_count)
    model = ner.build(cfg, len(words), labels, bilm)
    maker = BatchMaker(words, labels, need_chars=model.encoder.needs_chars(cache is not None), cache=cache)
    return model, maker, labels


def epoch_seconds(cfg, bilm, train_data, dev_data, cache) -> tuple[list, int]:
    """(train_seconds of each of cfg.epochs epochs, minor page faults of the whole run or -1)."""
    model, maker, labels = build_head(cfg, bilm, train_data, cache)
    faults = minor_faults()
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "metrics.jsonl")
        train(model, ner, cfg, ner.targets(train_data, cfg), dev_data, maker, labels, log_path=log)
        faults = minor_faults() - faults if faults >= 0 else -1
        with open(log) as f:
            return [json.loads(line)["train_seconds"] for line in f], faults


def minor_faults() -> int:
    """Minor page faults of this process so far (-1 where ``resource`` is missing, e.g. Windows)."""
    try:
        import resource
    except ImportError:
        return -1
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def head_lstm_seconds(cfg, data, input_dim: int) -> tuple[float, float]:
    """(seconds, GFLOP) of the head's BiLSTM alone, forward and backward, on random inputs of the
    epoch's batch shapes (the same length-sorted batches of ``batch_size``)."""
    torch.manual_seed(0)
    lstm = SequenceEncoder(input_dim, cfg.hidden_dim, cfg.num_lstm_layers, cfg.dropout).train()
    lengths = sorted(len(x.tokens) for x in data)
    batches = [lengths[s : s + cfg.batch_size] for s in range(0, len(lengths), cfg.batch_size)]
    H = cfg.hidden_dim
    widths = [input_dim] + [2 * H] * (cfg.num_lstm_layers - 1)
    # per padded position, both directions: 2 FLOPs per multiply-add, forward + 2x backward
    flop_per_position = sum(2 * 2 * (w + H) * 4 * H * 3 for w in widths)
    started, flops = time.perf_counter(), 0.0
    for rows in batches:
        T = max(rows)
        mask = torch.arange(T).unsqueeze(0) < torch.tensor(rows).unsqueeze(1)
        x = torch.randn(len(rows), T, input_dim, requires_grad=True)
        lstm(x, mask).sum().backward()
        flops += flop_per_position * len(rows) * T
    return time.perf_counter() - started, flops / 1e9


def phased_step(model, batch, cfg, params, optimizer, clock) -> torch.Tensor:
    """One training step of the NER head (``ner.CrfTagger``) exactly as ``tasks.train.train`` runs
    it (``model.loss`` plus the scalar-mix L2, zero_grad, backward, clipping, Adam), with the graph
    cut after the encoder and after the BiLSTM so that each part's backward pass is timed on its
    own: the gradients are those of one ``loss.backward()``. ``clock(name)`` is called at the end
    of each phase in ``PHASES`` (after "batch", which the caller times). Returns the loss."""
    encoded = model.dropout(model.encoder(batch))
    clock("encoder fwd")
    x = encoded.detach().requires_grad_()
    h = model.lstm(x, batch.mask)
    clock("BiLSTM fwd")
    h_in = h.detach().requires_grad_()
    emissions = model.output(model.dropout(h_in))
    loss = -model.crf(emissions, batch.tags, batch.mask).mean()
    if cfg.use_elmo and cfg.mix_l2 > 0:
        loss = loss + cfg.mix_l2 * model.encoder.mix_penalty()
    clock("output+CRF fwd")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clock("CRF+output bwd")
    h.backward(h_in.grad)
    clock("BiLSTM bwd")
    encoded.backward(x.grad)
    clock("encoder bwd")
    if cfg.grad_clip > 0:
        clip_grad_norm(params, cfg.grad_clip)
    clock("clip")
    optimizer.step()
    clock("Adam")
    return loss.detach()


def phase_seconds(cfg, bilm, train_data, cache) -> dict:
    """Seconds per phase of a cached training epoch (``phased_step`` on every batch, the same
    shuffled length-sorted batches as ``train``), and "total" for the whole pass."""
    model, maker, _ = build_head(cfg, bilm, train_data, cache)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_adam(params, cfg.lr)
    seconds = dict.fromkeys(PHASES, 0.0)
    started = time.perf_counter()
    last = [started]

    def clock(name: str) -> None:
        now = time.perf_counter()
        seconds[name] += now - last[0]
        last[0] = now

    batches = maker.batches(ner.targets(train_data, cfg), cfg.batch_size, shuffle=True, rng=random.Random(cfg.seed))
    for batch in batches:
        clock("batch")
        float(phased_step(model, batch, cfg, params, optimizer, clock))
        last[0] = time.perf_counter()
    seconds["total"] = time.perf_counter() - started
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="ELMo model folder (default: a random model of --preset size)")
    p.add_argument("--preset", default="small", help="original | medium | small | tiny (without --model)")
    p.add_argument("--train", default=os.path.join(ROOT, ".data", "conll2003", "train.txt"))
    p.add_argument("--max-sentences", type=int, default=0, help="use the first N sentences (0 = all 14,041)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=1,
                   help="epochs per mode; with 2 or more the later epochs' mean is reported beside the first")
    p.add_argument("--breakdown", action="store_true",
                   help="also time the head's BiLSTM alone (forward + backward) on the epoch's batch shapes")
    p.add_argument("--phases", action="store_true",
                   help="also time each phase of the cached training step over one more cached epoch")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bilm = ElmoBiLM.from_pretrained(args.model) if args.model else ElmoBiLM(preset(args.preset))
    if args.epochs < 1:
        p.error(f"--epochs must be at least 1, got {args.epochs}")
    # no early stopping: every mode trains all its epochs
    cfg = resolve_config("ner", {"batch_size": args.batch_size, "epochs": args.epochs,
                                 "patience": args.epochs + 1, "progress": False})
    data = ner.read(args.train, cfg)
    if args.max_sentences:
        data = data[: args.max_sentences]
    dev = data[:1]  # the loop scores a dev set after each epoch; keep it negligible
    tokens = sum(len(x.tokens) for x in data)

    cfg.cache = "none"
    recomputed_all, recomputed_faults = epoch_seconds(cfg, bilm, data, dev, None)
    cfg.cache = "memory"
    started = time.perf_counter()
    cache = LayerCache(bilm, batch_size=cfg.elmo_batch_size)
    cache.fill(x.tokens for x in data)
    fill = time.perf_counter() - started
    cached_all, cached_faults = epoch_seconds(cfg, bilm, data, dev, cache)
    recomputed, cached = recomputed_all[0], cached_all[0]
    result = {
        "model": args.model or f"random {args.preset}", "sentences": len(data), "tokens": tokens,
        "threads": torch.get_num_threads(), "batch_size": args.batch_size, "epochs": args.epochs,
        "recomputed_epoch_s": recomputed, "cache_fill_s": fill, "cached_epoch_s": cached,
        "speedup": recomputed / cached, "recomputed_epochs_s": recomputed_all, "cached_epochs_s": cached_all,
        "recomputed_minor_faults": recomputed_faults, "cached_minor_faults": cached_faults,
    }
    if args.epochs > 1:
        later = [sum(x[1:]) / len(x[1:]) for x in (recomputed_all, cached_all)]
        result.update(recomputed_later_epoch_s=later[0], cached_later_epoch_s=later[1],
                      speedup_later=later[0] / later[1])
    if args.breakdown:
        input_dim = bilm.output_dim + cfg.word_dim + cfg.char_dim
        seconds, gflop = head_lstm_seconds(cfg, data, input_dim)
        result.update(head_lstm_s=seconds, head_lstm_share=seconds / cached, head_lstm_gflops=gflop / seconds)
    if args.phases:
        result["phases_s"] = phase_seconds(cfg, bilm, data, cache)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"NER epoch on {len(data)} sentences ({tokens} tokens), ELMo {result['model']}, "
              f"{result['threads']} threads, batch {args.batch_size}"
              + (f"; {args.epochs} epochs per mode, the first:" if args.epochs > 1 else ""))
        print(f"  ELMo recomputed every batch : {recomputed:8.1f} s/epoch")
        print(f"  cached layers               : {cached:8.1f} s/epoch  ({result['speedup']:.1f}x faster)")
        print(f"  filling the cache (once)    : {fill:8.1f} s")
        if args.epochs > 1:
            label = "epoch 2" if args.epochs == 2 else f"epochs 2-{args.epochs}, mean"
            print(f"  {label:28s}: recomputed {result['recomputed_later_epoch_s']:.1f} s, "
                  f"cached {result['cached_later_epoch_s']:.1f} s  ({result['speedup_later']:.1f}x faster)")
        if cached_faults >= 0:
            print(f"  {'minor page faults':28s}: recomputed {recomputed_faults:,}, cached {cached_faults:,} "
                  f"(all {args.epochs} epoch{'s' if args.epochs > 1 else ''})")
        if args.breakdown:
            print(f"  head BiLSTM alone (fwd+bwd) : {result['head_lstm_s']:8.1f} s/epoch  "
                  f"({100 * result['head_lstm_share']:.0f}% of the cached epoch, "
                  f"{result['head_lstm_gflops']:.0f} GFLOP/s)")
        if args.phases:
            phases, n = result["phases_s"], -(-len(data) // args.batch_size)
            print(f"  phases of a cached epoch ({phases['total']:.1f} s, {n} batches; ms per batch):")
            for name in PHASES:
                print(f"    {name:16s} {1e3 * phases[name] / n:7.1f}  ({100 * phases[name] / phases['total']:4.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training-step time of a PTB preset on the real Penn Treebank text, float32 against bf16.

    python scripts/bench_ptb_step.py [--preset ptb-char-small] [--precisions fp32 bf16] \
        [--steps 10] [--rounds 3] [--threads 2] [--set FIELD=VALUE ...]

One trainer per precision, built from the same seed on ``.data/ptb/train.txt`` (``python
scripts/get_data.py --only ptb``) in the preset's contiguous windows; the rounds alternate the
precisions (``--steps`` timed steps each, after 3 untimed), so a change in the machine's load
falls on all of them alike. Prints a markdown table: median ms per step over the rounds, tokens/s
and the ratio to the first precision. bf16 pays only on CPUs with bf16 dot products
(AVX512-BF16, AMX) or on a GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from pretrain.batches import WindowBatcher
from pretrain.config import PTB_PRESETS, pretrain_preset
from pretrain.corpus import load_corpus
from pretrain.distributed import DistInfo
from pretrain.lm import BidirectionalLM
from pretrain.recipe import apply_recipe
from pretrain.train import Trainer
from pretrain.vocab import Vocabulary, WordTable


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ptb-char-small", choices=list(PTB_PRESETS))
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=10, help="timed steps per precision and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config overrides")
    p.add_argument("--data", default=".data/ptb/train.txt")
    args = p.parse_args(argv)
    if not os.path.isfile(args.data):
        p.error(f"--data {args.data} not found: run `python scripts/get_data.py --only ptb` first")
    torch.set_num_threads(args.threads)
    base = pretrain_preset(args.preset).with_override("train.max_steps=1000000")
    for item in args.set:
        base = base.with_override(item)
    d = base.data
    table = WordTable(None, base.model.char_cnn.max_characters_per_token)  # as pretrain.run
    corpus, _ = load_corpus([args.data], None, table, d.tokenizer, 0.0)
    vocab = Vocabulary.from_counts(table.counts([corpus.ids]), d.max_vocab_size, d.min_count)
    table.set_vocab(vocab)
    trainers = {}
    for precision in args.precisions:
        config = base.with_override(f"train.precision={precision}")
        torch.manual_seed(config.train.seed)
        lm = BidirectionalLM(config.model, len(vocab), config.softmax)
        apply_recipe(lm, config.optim)  # as pretrain.run builds it
        batcher = WindowBatcher(corpus, table, d.batch_size, d.window, 0, contiguous=True)
        trainer = Trainer(lm, batcher, config, 10**6, info=DistInfo(device=torch.device("cpu")))
        for _ in range(3):
            trainer.train_step(batcher.next_batch())
        trainers[precision] = (trainer, batcher)
    times = {k: [] for k in trainers}
    for _ in range(args.rounds):
        for precision, (trainer, batcher) in trainers.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step(batcher.next_batch())
            times[precision].append((time.perf_counter() - t0) / args.steps)
    tokens = d.batch_size * d.window
    print(f"{args.preset} on {args.data}, {d.batch_size} x {d.window} tokens per step, "
          f"{args.threads} thread(s), {args.rounds} rounds x {args.steps} steps, torch {torch.__version__}"
          + (f", --set {' '.join(args.set)}" if args.set else ""))
    print("\n| precision | ms/step (median) | tokens/s | speed vs " + args.precisions[0] + " |")
    print("| --- | ---: | ---: | ---: |")
    first = statistics.median(times[args.precisions[0]])
    for precision, ts in times.items():
        m = statistics.median(ts)
        print(f"| {precision} | {m * 1000:.1f} | {tokens / m:,.0f} | {first / m:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

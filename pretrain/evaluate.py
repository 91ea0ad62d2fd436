"""Perplexity of a trained LM on any text: ``elmo-pretrain evaluate MODEL --data FILES``.

Two ways of reading the text (``--mode``):

* ``stream`` (the convention of the PTB results, e.g. Zaremba et al. 2014, Kim et al. 2016): the
  text is one stream ``<S> w_1 .. w_n </S> <S> ...`` in file order, cut at sentence boundaries
  into ``batch_size`` slices of about as many sentences each, read side by side in
  ``window``-token pieces with the LSTM state carried from piece to piece. The backward LM reads
  each slice reversed, the same way, with the backward stack. Each slice starts from the model's
  initial state (so ``batch_size`` 1 is the exact stream; 20 slices of PTB's test set cost 19
  cold starts in 82k tokens).
* ``sentence``: every sentence alone from the initial state, as ``elmo-embed`` uses the model
  (``pretrain.lm.evaluate`` on sentence batches).

Either way each sentence of n words gives n + 1 targets per direction (the words and </S> forward,
<S> and the words backward), so a one-sentence file gives the same perplexity in both modes.
Words outside the softmax vocabulary are predicted as ``<UNK>`` (their characters are still read);
their number is reported. The model is a run directory of ``elmo-pretrain`` (the model files +
``vocab.txt`` + ``lm_softmax.pt``), one of its checkpoints (``RUN/checkpoints/step-N.pt``: the
weights of that step, e.g. to draw a curve while the run goes on), or a directory of original
files (``options.json`` + weights ``.hdf5``) with ``--vocab`` and ``--softmax`` where they are
not in it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from typing import Optional, Sequence

import numpy as np
import torch

from elmo.bilm import reverse_padded
from pretrain.batches import Batch, eval_batches
from pretrain.config import PretrainConfig, SoftmaxConfig
from pretrain.lm import BidirectionalLM, evaluate
from pretrain.vocab import NO_TARGET, UNK_ID, UNK_TOKEN, Vocabulary, WordTable

logger = logging.getLogger(__name__)
FORWARD, BACKWARD = 0, 1  # the two LMs, in the order of their results


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


class StreamEvaluator:
    """The stream-mode perplexity of a corpus, per direction; ``evaluator(lm) -> dict``.

    Built once per held-out set (the trainer calls it at every evaluation). ``directions``
    "forward" skips the backward LM (its entries are NaN).
    """

    def __init__(self, corpus, table: WordTable, batch_size: int, window: int,
                 directions: str = "both", progress: bool = False) -> None:
        if len(corpus) == 0:
            raise ValueError("stream evaluation: the text holds no sentence")
        self.table, self.window, self.directions, self.progress = table, window, directions, progress
        self.rows = min(batch_size, len(corpus))
        bounds = np.linspace(0, len(corpus), self.rows + 1).astype(np.int64)
        slices = []
        for r in range(self.rows):
            parts = []
            for i in range(int(bounds[r]), int(bounds[r + 1])):
                parts.extend(([table.bos], corpus[i], [table.eos]))
            slices.append(np.concatenate(parts).astype(np.int64))  # type ids with the boundaries
        self.streams = [self._rows(slices, table.eos), self._rows([x[::-1] for x in slices], table.bos)]
        seq = np.concatenate(slices)
        words = seq[(seq != table.bos) & (seq != table.eos)]
        unk = np.array([w == UNK_TOKEN for w in table.words[: len(table)]])
        self.num_words = int(len(words))
        self.oov_words = int(((table.targets[words] == UNK_ID) & ~unk[words]).sum())

    def _rows(self, slices: list, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, L) type ids (0 = padding at the end of shorter slices) and targets: the next
        token's softmax id, except after ``stop`` (</S> forward, <S> backward: the next
        sentence's boundary is not predicted)."""
        L = max(len(x) for x in slices)
        ids = np.zeros((len(slices), L), np.int64)
        tgt = np.full((len(slices), L), NO_TARGET, np.int64)
        for r, seq in enumerate(slices):
            ids[r, : len(seq)] = seq
            tgt[r, : len(seq) - 1] = self.table.targets[seq[1:]]
            tgt[r, : len(seq)][seq == stop] = NO_TARGET
        return ids, tgt

    @property
    def num_targets(self) -> int:
        return int((self.streams[0][1] >= 0).sum())

    def windows(self, direction: int):
        ids, targets = self.streams[direction]
        for start in range(0, ids.shape[1], self.window):
            x, t = ids[:, start : start + self.window], targets[:, start : start + self.window]
            types, inverse = np.unique(x, return_inverse=True)
            inverse = inverse.reshape(x.shape)
            if types[0] == 0:  # padding (the end of the last slice)
                types, inverse = types[1:], inverse - 1
            chars = torch.from_numpy(self.table.chars[types].astype(np.int64))
            tokens = torch.from_numpy(np.where(x > 0, inverse, -1).astype(np.int64))
            yield Batch(tokens, chars, torch.from_numpy(t.copy()), torch.full_like(tokens, NO_TARGET))

    @staticmethod
    def _top_layer(lm: BidirectionalLM, batch: Batch, state, direction: int):
        """Direction ``direction``'s top layer (B, T, P) over one piece, each row in that
        direction's reading order (as ``windows`` gives it), and the state after it. The model
        reads text order and runs its backward stack right to left, so a backward piece goes in
        flipped within each row's length and its top layer comes out flipped back (a reordering:
        the numbers are the backward stack's own)."""
        if direction == FORWARD:
            return lm.top_layer(batch, state, directions="forward")
        lengths = batch.mask.sum(-1)
        text_order = batch._replace(tokens=reverse_padded(batch.tokens, lengths, time_dim=1))
        top, state = lm.top_layer(text_order, state, directions="backward")
        return reverse_padded(top, lengths, time_dim=1), state

    @torch.no_grad()
    def __call__(self, lm: BidirectionalLM) -> dict:
        was_training = lm.training
        lm.eval()
        device = next(lm.parameters()).device
        directions = (FORWARD,) if self.directions == "forward" else (FORWARD, BACKWARD)
        sums, counts = [float("nan")] * 2, [0, 0]
        bar = None
        if self.progress:
            from tqdm import tqdm

            n = -(-self.streams[0][0].shape[1] // self.window) * len(directions)
            bar = tqdm(total=n, unit="window", desc="evaluate", dynamic_ncols=True, file=sys.stderr)
        try:
            for d in directions:
                state, total, n = None, 0.0, 0
                for batch in self.windows(d):
                    batch = batch.to(device)
                    top, state = self._top_layer(lm, batch, state, d)
                    sel = batch.forward_targets >= 0
                    total += float(lm.softmax(top[sel], batch.forward_targets[sel]).double().sum())
                    n += int(sel.sum())
                    if bar is not None:
                        bar.update(1)
                sums[d], counts[d] = total, n
        finally:
            lm.train(was_training)
            if bar is not None:
                bar.close()
        loss = [s / max(c, 1) for s, c in zip(sums, counts)]
        return {"forward_loss": loss[0], "backward_loss": loss[1],
                "forward_ppl": _perplexity(loss[0]),
                "backward_ppl": _perplexity(loss[1]) if not math.isnan(loss[1]) else float("nan"),
                "tokens": counts[0], "words": self.num_words, "oov_words": self.oov_words}


# -- loading a model ------------------------------------------------------------------------------
def load_lm(model: str, vocab_file: Optional[str] = None, softmax_file: Optional[str] = None,
            device: str = "cpu") -> tuple[BidirectionalLM, Vocabulary, Optional[PretrainConfig]]:
    """The biLM of a model directory (ours or original files) or of a checkpoint file of
    ``elmo-pretrain``, with its softmax and vocabulary."""
    from elmo.model import ElmoBiLM
    from pretrain.export import SOFTMAX_NAME, VOCAB_NAME

    config, softmax_state = None, None
    if os.path.isfile(model):  # RUN/checkpoints/step-N.pt: the weights of that step
        from pretrain.checkpoint import load_checkpoint

        data = load_checkpoint(model)
        if not isinstance(data, dict) or "model" not in data or "config" not in data:
            raise ValueError(f"MODEL {model}: not a checkpoint of elmo-pretrain")
        config = PretrainConfig.from_dict(data["config"])
        bilm = ElmoBiLM(config.model)
        bilm.load_state_dict({k[len("bilm."):]: v for k, v in data["model"].items() if k.startswith("bilm.")})
        softmax_state = {k[len("softmax."):]: v for k, v in data["model"].items() if k.startswith("softmax.")}
        run_dir = os.path.dirname(os.path.dirname(os.path.abspath(model)))
    elif os.path.isdir(model):
        bilm = ElmoBiLM.from_pretrained(model)
        run_dir = model
        config_path = os.path.join(model, "pretrain_config.json")
        config = PretrainConfig.load(config_path) if os.path.isfile(config_path) else None
    else:
        raise FileNotFoundError(f"MODEL {model}: no such directory or file (expected an elmo-pretrain "
                                "run directory or checkpoint, or a directory with options.json + "
                                "weights .hdf5)")
    vocab_file = vocab_file or os.path.join(run_dir, VOCAB_NAME)
    needed = [("vocabulary", vocab_file, "--vocab")]
    if softmax_state is None:
        softmax_file = softmax_file or os.path.join(run_dir, SOFTMAX_NAME)
        needed.append(("softmax", softmax_file, "--softmax"))
    for what, path, flag in needed:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no {what} file; perplexity needs the LM's {what} "
                                    f"(elmo-pretrain writes it into the run directory); pass {flag} FILE")
    vocab = Vocabulary.load(vocab_file)
    kind = config.softmax.kind if config is not None else "full"
    if softmax_state is None:
        saved = torch.load(softmax_file, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or "state" not in saved:
            raise ValueError(f"{softmax_file}: not a softmax file of elmo-pretrain (expected a dict "
                             "with 'kind' and 'state')")
        softmax_state, kind = saved["state"], saved.get("kind", kind)
    if kind == "adaptive" and config is None:
        raise ValueError(f"{softmax_file}: an adaptive softmax needs its cutoffs from the run's "
                         "pretrain_config.json, which is not in MODEL")
    # A sampled softmax has the full softmax's weights; evaluation is exact either way.
    softmax_cfg = config.softmax if kind == "adaptive" else SoftmaxConfig(kind="full")
    weight = softmax_state.get("weight")
    P = bilm.config.bilm.projection_dim
    if weight is not None and tuple(weight.shape) != (len(vocab), P):
        raise ValueError(f"softmax weight is {tuple(weight.shape)} but the vocabulary ({vocab_file}) "
                         f"has {len(vocab)} words and the model's output size is {P}; use the "
                         "vocabulary the model was trained with")
    lm = BidirectionalLM(bilm.config, len(vocab), softmax_cfg, bilm=bilm)
    lm.softmax.load_state_dict(softmax_state)
    return lm.to(device), vocab, config


def evaluate_text(lm: BidirectionalLM, vocab: Vocabulary, files: Sequence[str], mode: str = "stream",
                  tokenizer: str = "whitespace", batch_size: int = 20, window: int = 35,
                  directions: str = "both", progress: bool = False) -> dict:
    """Perplexity per direction of ``lm`` on text files (one sentence per line)."""
    from pretrain.corpus import load_corpus

    table = WordTable(vocab, lm.bilm.config.char_cnn.max_characters_per_token)
    corpus, _ = load_corpus(list(files), None, table, tokenizer, 0.0)
    if mode == "stream":
        result = StreamEvaluator(corpus, table, batch_size, window, directions, progress)(lm)
    elif mode == "sentence":
        stream = StreamEvaluator(corpus, table, 1, 1)  # only for the word counts
        result = evaluate(lm, eval_batches(corpus, table, batch_size, 10_000), directions=directions)
        result.update(words=stream.num_words, oov_words=stream.oov_words)  # an unrun direction: NaN
    else:
        raise ValueError(f"--mode must be stream or sentence, got {mode!r}")
    result.update(mode=mode, sentences=len(corpus), vocab_size=len(vocab))
    return result


# -- command line ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="elmo-pretrain evaluate",
        description="Perplexity per direction of a trained LM on text (one sentence per line).")
    p.add_argument("model", metavar="MODEL", help="an elmo-pretrain run directory or one of its "
                   "checkpoints (RUN/checkpoints/step-N.pt), or a directory with the original "
                   "options.json + weights .hdf5 (then --vocab/--softmax)")
    p.add_argument("--data", nargs="+", required=True, metavar="FILES", help="text files, folders or globs")
    p.add_argument("--mode", choices=["stream", "sentence"], default="stream",
                   help="stream: state carried across sentences (PTB convention, default); "
                        "sentence: each sentence from the initial state")
    p.add_argument("--vocab", metavar="FILE", help="the softmax vocabulary (default MODEL/vocab.txt)")
    p.add_argument("--softmax", metavar="FILE", help="the softmax weights (default MODEL/lm_softmax.pt)")
    p.add_argument("--tokenizer", choices=["whitespace", "punct"],
                   help="default: the run's (pretrain_config.json), else whitespace")
    p.add_argument("--directions", choices=["both", "forward"],
                   help="default: the run's train.directions, else both")
    p.add_argument("--batch-size", type=int, default=20, help="stream: slices read side by side; "
                   "sentence: sentences per batch")
    p.add_argument("--window", type=int, default=35, help="stream: tokens per piece")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        for name in ("batch_size", "window", "threads"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if args.threads:
            torch.set_num_threads(args.threads)
        lm, vocab, config = load_lm(args.model, args.vocab, args.softmax, args.device)
        tokenizer = args.tokenizer or (config.data.tokenizer if config else "whitespace")
        directions = args.directions or (config.train.directions if config else "both")
        result = evaluate_text(lm, vocab, args.data, args.mode, tokenizer, args.batch_size,
                               args.window, directions, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"elmo-pretrain evaluate: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                          for k, v in result.items()}))
        return 0
    lines = [f"{args.model} on {', '.join(args.data)} ({args.mode} mode): {result['sentences']:,} "
             f"sentences, {result['tokens']:,} targets per direction"]
    for d in ("forward", "backward"):
        if not math.isnan(result[f"{d}_loss"]):
            lines.append(f"  {d:8s} perplexity {result[f'{d}_ppl']:.2f}  (loss {result[f'{d}_loss']:.4f} nats)")
    lines.append(f"  words outside the {result['vocab_size']:,}-word vocabulary, counted as {UNK_TOKEN}: "
                 f"{result['oov_words']:,} of {result['words']:,}")
    print("\n".join(lines))
    return 0

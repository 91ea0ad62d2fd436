"""One pretraining run end to end: corpus -> vocabulary -> batches -> LM -> trainer -> model dir.

``run(config, train, out_dir, ...)`` is what ``elmo-pretrain`` calls. The run directory receives
``pretrain_config.json`` (before the first step), ``vocab.txt``, ``metrics.jsonl``,
``checkpoints/``, the model (``elmo_config.json`` + ``elmo_weights.safetensors`` (or ``.pt``) + ``lm_softmax.pt``),
``curves.png`` and ``results.json`` (held-out perplexity per direction next to a unigram
baseline's on the same tokens).
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from elmo.io import write_json_atomic
from pretrain import checkpoint as ckpt
from pretrain.batches import SentenceBatcher, WindowBatcher, eval_batches
from pretrain.config import PretrainConfig
from pretrain.corpus import EncodedCorpus, StreamingCorpus, check_heldout, load_corpus
from pretrain.recipe import apply_recipe, count_parameters
from pretrain.distributed import DistInfo, barrier, broadcast_object, setup
from pretrain.evaluate import StreamEvaluator
from pretrain.export import VOCAB_NAME, load_init, save_model_dir, transfer_softmax
from pretrain.lm import BidirectionalLM, describe_perplexities, unigram_log_probs, unigram_perplexity
from pretrain.plot import plot_curves
from pretrain.prepared import (IMPLICIT_DIR, PreparedSentences, adopt_tokenizer, open_for_training,
                               prepare_for_run, prepared_train_dir)
from pretrain.resume import apply_learning_rate, describe_inputs, log_changes
from pretrain.resume import check_config as check_resume_config
from pretrain.resume import check_inputs as check_resume_inputs
from pretrain.train import Trainer
from pretrain.vocab import BOS_ID, EOS_ID, Vocabulary, WordTable

logger = logging.getLogger(__name__)

CONFIG_NAME = "pretrain_config.json"
RESULTS_NAME = "results.json"
PLOT_NAME = "curves.png"


def total_steps(config: PretrainConfig, n_tokens: int, n_sentences: int, world: int) -> tuple[int, str]:
    """Steps for the configured budget, from the actual corpus size; and a description."""
    d = config.data
    if d.batch_mode == "window":
        per_step = d.batch_size * d.window * world
        epoch_tokens = n_tokens + 2 * n_sentences  # with <S> and </S>
    else:
        pieces = n_sentences + max(0, n_tokens // d.max_sentence_tokens)  # upper bound of cuts
        per_step = d.batch_size * world * (n_tokens + 2 * n_sentences) / max(1, pieces)
        epoch_tokens = n_tokens + 2 * n_sentences
    steps_per_epoch = epoch_steps(config, n_tokens, n_sentences, world)
    kind, amount = config.train.budget()
    if kind == "max_steps":
        steps = int(amount)
    elif kind == "max_tokens":
        steps = max(1, math.ceil(amount / per_step))
    else:
        steps = max(1, math.ceil(amount * steps_per_epoch))
    text = (f"{steps} steps x {per_step:.0f} tokens = {steps * per_step:,.0f} tokens "
            f"= {steps / steps_per_epoch:.2f} epochs of {epoch_tokens:,} tokens")
    return steps, text


def epoch_steps(config: PretrainConfig, n_tokens: int, n_sentences: int, world: int) -> int:
    """Steps of one pass over the corpus (window mode: exact; sentence mode: an upper bound)."""
    d = config.data
    epoch_tokens = n_tokens + 2 * n_sentences  # with <S> and </S>
    if d.batch_mode == "window":
        per_step = d.batch_size * d.window * world
    else:
        pieces = n_sentences + max(0, n_tokens // d.max_sentence_tokens)
        per_step = d.batch_size * world * epoch_tokens / max(1, pieces)
    return max(1, math.ceil(epoch_tokens / per_step))


def _target_counts(table: WordTable, vocab: Vocabulary, corpus: EncodedCorpus) -> torch.Tensor:
    counts = np.bincount(table.targets[corpus.ids], minlength=len(vocab)).astype(np.float64)
    counts[BOS_ID] += len(corpus)
    counts[EOS_ID] += len(corpus)
    return torch.from_numpy(counts)


def run(config: PretrainConfig, train: Sequence[str], out_dir: str,
        heldout: Optional[Sequence[str]] = None, resume: bool = False, init: Optional[str] = None,
        vocab_path: Optional[str] = None, info: Optional[DistInfo] = None,
        callback: Optional[Callable] = None) -> dict:
    """Train; returns the summary written to results.json (``completed`` False after Ctrl-C)."""
    t_start = time.time()
    config.check()
    info = info or setup(config.train.device)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    d, tc = config.data, config.train
    prepared_dir = prepared_train_dir(train)  # --train CORPUS_DIR (elmo-prepare): its tokenizer
    if prepared_dir is not None:
        adopt_tokenizer(d, prepared_dir)
    latest = ckpt.load_latest(out_dir) if resume else None
    if resume and latest is None:
        logger.info("--resume: no checkpoint in %s yet; starting from the beginning", out_dir)
    if not resume and info.is_main and ckpt.list_checkpoints(out_dir):
        raise FileExistsError(f"{out_dir} already holds checkpoints; pass --resume to continue that "
                              "run, or choose another --out")
    if heldout:
        check_heldout(heldout)
    if info.is_main:
        ckpt.clean_run_dir(out_dir)  # temporary files of a killed run
    resume_changes = {}
    if latest is not None:  # validated before anything is written (pretrain.resume)
        resume_changes = check_resume_config(config, latest, out_dir)
        check_resume_inputs(latest.get("inputs"), train, heldout, latest["path"])
        if len(latest["ranks"]) != info.world:
            raise ValueError(f"{latest['path']} was written by {len(latest['ranks'])} process(es); "
                             f"resume with the same number (this run has {info.world})")
        if init:
            logger.info("--resume: the weights come from %s; --init %s is not used", latest["path"], init)
            init = None
    init_model = load_init(init) if init else None
    if init_model is not None and init_model.bilm.config != config.model:
        logger.info("--init: the model sizes come from %s", init)
        config.model = init_model.bilm.config
    if info.is_main:
        os.makedirs(out_dir, exist_ok=True)
        config.save(os.path.join(out_dir, CONFIG_NAME))
        metrics = os.path.join(out_dir, "metrics.jsonl")
        if latest is None and os.path.exists(metrics):
            os.remove(metrics)  # a fresh start: no curve of an earlier attempt

    # Vocabulary: the run's own (resume), a given file, or counted from the training text.
    saved_vocab = os.path.join(out_dir, VOCAB_NAME)
    vocab = Vocabulary.load(saved_vocab) if latest is not None and os.path.isfile(saved_vocab) else \
        Vocabulary.load(vocab_path) if vocab_path else None
    table = WordTable(vocab, config.model.char_cnn.max_characters_per_token)
    t0 = time.time()
    if prepared_dir is not None and d.streaming:
        raise ValueError(f"--train {prepared_dir} is a prepared corpus, read without loading it; "
                         "--streaming is for raw text: leave it out")
    if d.streaming:
        corpus = StreamingCorpus(train, table, d.tokenizer, 0.0 if heldout else d.heldout_fraction,
                                 d.shuffle_buffer, d.text_field)
        counts, n_tokens, n_sentences, held_ids = corpus.scan(d.eval_max_tokens)
        held = EncodedCorpus(table, held_ids)
        if heldout:
            held = load_corpus(heldout, None, table, d.tokenizer, 0.0, d.text_field)[0]
        if vocab is None:
            vocab = Vocabulary.from_counts(counts, d.max_vocab_size, d.min_count)
        target_counts = torch.zeros(len(vocab), dtype=torch.float64)
        for w, n in counts.items():
            target_counts[vocab.id(w)] += n
        target_counts[BOS_ID] += n_sentences
        target_counts[EOS_ID] += n_sentences
    elif d.prepare or prepared_dir:  # memory-mapped token ids (pretrain.prepared)
        if prepared_dir is None:  # raw text: prepared once into OUT/corpus by rank 0
            error = None
            if info.is_main:
                try:
                    prepare_for_run(train, out_dir, d.tokenizer, 0.0 if heldout else d.heldout_fraction,
                                    d.text_field, latest is not None, tc.progress)
                except (ValueError, FileNotFoundError, OSError) as e:
                    error = e
            message = broadcast_object(None if error is None else str(error), info)
            if error is not None:
                raise error
            if message is not None:  # the other ranks stop with rank 0's error
                raise ValueError(message)
            prepared_dir = os.path.join(out_dir, IMPLICIT_DIR)
        corpus, held, table, vocab, counts = open_for_training(
            prepared_dir, heldout, d, config.model.char_cnn.max_characters_per_token, vocab)
        target_counts = torch.from_numpy(counts)
        n_tokens, n_sentences = corpus.num_tokens, len(corpus)
    else:
        corpus, held = load_corpus(train, heldout, table, d.tokenizer, d.heldout_fraction, d.text_field)
        n_tokens, n_sentences = corpus.num_tokens, len(corpus)
        if vocab is None:
            vocab = Vocabulary.from_counts(table.counts([corpus.ids]), d.max_vocab_size, d.min_count)
    table.set_vocab(vocab)
    if not d.streaming and not isinstance(corpus, PreparedSentences):
        target_counts = _target_counts(table, vocab, corpus)
    if info.is_main:
        vocab.save(saved_vocab)
    logger.info("corpus: %s training tokens in %s lines, %s held-out tokens; %s word types, "
                "vocabulary %s (read in %.1f s)", f"{n_tokens:,}", f"{n_sentences:,}",
                f"{held.num_tokens:,}", f"{len(table) - 1:,}", f"{len(vocab):,}", time.time() - t0)

    if heldout and len(held) == 0:
        raise ValueError(f"--heldout {', '.join(heldout)}: no held-out text (every line is blank); give "
                         "held-out text, or leave --heldout out to hold out a fraction of the training lines")
    steps, budget_text = total_steps(config, n_tokens, n_sentences, info.world)
    logger.info("budget: %s", budget_text)
    torch.manual_seed(tc.seed)  # the same initial weights on every process
    lm = BidirectionalLM(config.model, len(vocab), config.softmax, dedup=tc.dedup_tokens,
                         bilm=init_model.bilm if init_model else None)
    apply_recipe(lm, config.optim, initialise=init_model is None)
    logger.info("model: %s trainable parameters in the %s LM%s", f"{count_parameters(lm, tc.directions):,}",
                "forward" if tc.directions == "forward" else "bidirectional",
                " (LSTM projections fixed at the identity)" if config.optim.identity_projection else "")
    if config.softmax.unigram_bias_init:
        lm.softmax.init_bias(unigram_log_probs(target_counts))
    if init_model is not None:
        logger.info("--init %s: %d softmax rows carried over", init, transfer_softmax(lm, vocab, init_model))
    if d.batch_mode == "window":
        batcher = WindowBatcher(corpus, table, d.batch_size, d.window, tc.seed, info.rank, info.world,
                                contiguous=d.window_order == "contiguous")
    else:
        batcher = SentenceBatcher(corpus, table, d.batch_size, d.max_sentence_tokens, tc.seed,
                                  info.rank, info.world)
    held_batches = eval_batches(held, table, d.batch_size, d.max_sentence_tokens, d.eval_max_tokens) \
        if len(held) else []
    if config.optim.schedule == "plateau" and not held_batches:
        raise ValueError("optim.schedule 'plateau' needs held-out text (--heldout FILES or "
                         "data.heldout_fraction > 0)")
    heldout_eval = held_batches
    if d.eval_mode == "stream" and held_batches:  # the held-out text in order, state carried
        heldout_eval = StreamEvaluator(held, table, d.batch_size, d.window, tc.directions)
    trainer = Trainer(lm, batcher, config, steps, out_dir, info, heldout_eval, callback,
                      steps_per_epoch=epoch_steps(config, n_tokens, n_sentences, info.world))
    trainer.on_checkpoint = lambda: save_model_dir(lm, vocab, out_dir)
    trainer.extra_state["inputs"] = {"train": describe_inputs(train), "heldout": describe_inputs(heldout)}
    if latest is not None:
        try:
            trainer.load_checkpoint(latest)
        except RuntimeError as e:  # e.g. a size mismatch: weights that do not fit the config
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            detail = next((line for line in lines if line.startswith(("size mismatch", "Missing key",
                                                                      "Unexpected key"))), lines[0])
            raise ValueError(f"{latest['path']}: its weights do not fit the model of the run's "
                             f"configuration ({detail[:200]} ...); the checkpoint or "
                             f"{CONFIG_NAME} was changed by hand: restore it, or start a new run") from None
        if "optim.lr" in resume_changes:
            apply_learning_rate(trainer.optimizer, trainer.scheduler, config.optim.lr)
        log_changes(resume_changes, trainer.step)
        logger.info("resumed from %s (step %d)", latest["path"], trainer.step)
    completed = trainer.fit()

    summary = {"completed": completed, "step": trainer.step, "total_steps": steps,
               "tokens": trainer.tokens, "budget": budget_text, "vocab_size": len(vocab),
               "train_tokens": n_tokens, "train_lines": n_sentences,
               "world_size": info.world, "seconds": None}
    if info.is_main:
        save_model_dir(lm, vocab, out_dir)
        if completed and held_batches:
            result = trainer.evaluate()
            unigram = unigram_perplexity(unigram_log_probs(target_counts), held_batches)
            backward = result["backward_ppl"]  # NaN when only the forward LM was trained
            summary["heldout"] = {
                "tokens_per_direction": result["tokens"],
                "forward_perplexity": result["forward_ppl"],
                "backward_perplexity": None if math.isnan(backward) else backward,
                "unigram_perplexity_forward_targets": unigram["forward_ppl"],
                "unigram_perplexity_backward_targets": unigram["backward_ppl"]}
            logger.info("held-out perplexity: %s; unigram baseline %.2f (%d tokens per direction)",
                        describe_perplexities(result["forward_ppl"], backward), unigram["forward_ppl"],
                        result["tokens"])
        summary["seconds"] = round(time.time() - t_start, 1)
        if completed:
            write_json_atomic(os.path.join(out_dir, RESULTS_NAME), summary)
            unigram_ppl = summary.get("heldout", {}).get("unigram_perplexity_forward_targets")
            label = "training loss" if lm.softmax.kind != "sampled" else \
                f"training loss (sampled softmax, {config.softmax.num_samples} negatives)"
            plot_curves(os.path.join(out_dir, "metrics.jsonl"), os.path.join(out_dir, PLOT_NAME),
                        unigram_ppl, label)
    barrier(info)
    return summary

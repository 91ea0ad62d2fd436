"""``elmo-task``: train, evaluate and apply task models on ELMo layers.

    elmo-task train {ner,srl,classify} --train F --dev F [--test F] --out DIR
              (--model ELMO_DIR | --options-file O --weight-file W | --no-elmo)
              [--config JSON] [--epochs N] [--threads N] [--set FIELD=VALUE ...] [--force]
    elmo-task evaluate DIR --data F [--json]
    elmo-task predict DIR --data F --output F [--force]
    elmo-task split FILE_OR_FOLDER --out DIR [--label-column C] [--dev 0.1] [--test 0.1] [--seed 0]

``--set`` takes any field of tasks.config.TaskConfig by its path (``--set train.lr=0.002 --set
data.max_train=1000 --set head.hidden_dim=64``) or by its flat name of earlier versions (``lr``).
Every head reads trainable word embeddings and a character CNN besides the ELMo mix (the paper
adds ELMo to its baselines' input); ``--no-elmo`` trains that baseline: the same model without
the biLM.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import random
import sys
import time
from typing import Optional

import torch

from elmo import ElmoBiLM, load_original
from elmo.hub import DownloadError
from elmo.io import DiskFullError, atomic_open, check_output, clean_orphans, write_json_atomic
from tasks.cache import LayerCache
from tasks.checkpoint import (CONFIG_NAME, ELMO_DIR, VOCAB_NAME, WEIGHTS_NAME, get_task, load_model, save_setup,
                              save_weights)
from tasks.config import TASKS, TaskConfig, nest, parse_set, resolve_config
from tasks.data import BatchMaker, Symbols
from tasks.metrics import format_conlleval
from tasks.split import split_classification
from tasks.train import evaluate, predict, train

logger = logging.getLogger("tasks.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="elmo-task", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a task model")
    t.add_argument("task", choices=TASKS)
    t.add_argument("--train", required=True, help="training data (a file, a class folder, or hf:NAME:SPLIT)")
    t.add_argument("--dev", required=True, help="development data (early stopping)")
    t.add_argument("--test", help="test data, scored once with the best model")
    t.add_argument("--out", required=True, help="the model folder to write")
    elmo = t.add_mutually_exclusive_group(required=True)
    elmo.add_argument("--model", help="ELMo model folder (ours, or options.json + weights hdf5)")
    elmo.add_argument("--options-file", help="original ELMo options.json (with --weight-file)")
    elmo.add_argument("--no-elmo", action="store_true", help="baseline: word embeddings + char CNN")
    t.add_argument("--weight-file", help="original ELMo weights hdf5 (with --options-file)")
    t.add_argument("--config", help="JSON file of TaskConfig fields")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--fine-tune", action="store_true", help="train the biLM too (no cache)")
    t.add_argument("--device")
    t.add_argument("--seed", type=int)
    t.add_argument("--threads", type=int,
                   help="torch CPU threads (the train.num_threads field; 0 = torch's default)")
    t.add_argument("--force", action="store_true", help="replace a model already in --out")
    t.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    t.add_argument("--quiet", action="store_true", help="warnings only, no progress bars")
    e = sub.add_parser("evaluate", help="score a model folder on labelled data")
    e.add_argument("model_dir")
    e.add_argument("--data", required=True)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--device", default="cpu")
    e.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    e.add_argument("--quiet", action="store_true")
    r = sub.add_parser("predict", help="tag or classify a file with a model folder")
    r.add_argument("model_dir")
    r.add_argument("--data", required=True)
    r.add_argument("--output", required=True, help="the file to write (never one of the inputs)")
    r.add_argument("--force", action="store_true", help="replace --output if it exists")
    r.add_argument("--device", default="cpu")
    r.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    r.add_argument("--quiet", action="store_true")
    s = sub.add_parser("split", help="split one classification file or class folder into train/dev/test")
    s.add_argument("data")
    s.add_argument("--out", required=True)
    s.add_argument("--label-column", default="label", help="header name or 0-based index (CSV/TSV), key (JSON-lines)")
    s.add_argument("--dev", type=float, default=0.1)
    s.add_argument("--test", type=float, default=0.1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    return p


def _config(args: argparse.Namespace) -> TaskConfig:
    """The task's defaults, then the --config file (nested or the flat layout of earlier
    versions), then each --set, then the flags."""
    data: dict = {}
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"--config {args.config}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"--config {args.config}: expected a JSON object of TaskConfig fields")
        data, ignored = nest({**data, "task": args.task})  # the command's task wins
        if ignored:
            logger.info("--config %s: the %s head has no %s (fields of another task's head); ignored",
                        args.config, args.task, ", ".join(ignored))
    data = parse_set(args.set, args.task, data)
    flags = [("epochs", "train.epochs"), ("batch_size", "train.batch_size"), ("device", "train.device"),
             ("seed", "train.seed"), ("threads", "train.num_threads")]
    flags = [f"{field}={json.dumps(getattr(args, flag))}" for flag, field in flags
             if getattr(args, flag) is not None]
    if args.fine_tune:
        flags.append("elmo.fine_tune=true")
    if args.quiet:
        flags.append("train.progress=false")
    if args.no_elmo:
        flags.append("elmo.use=false")  # the baseline: the same head and inputs without the biLM
    return resolve_config(args.task, parse_set(flags, args.task, data))


def _load_elmo(args: argparse.Namespace, cfg: TaskConfig) -> Optional[ElmoBiLM]:
    if not cfg.elmo.use:  # (the flag combinations were checked by _check_train_args)
        return None
    def source(spec: str) -> str:  # a local path made absolute; a URL or hub id as given
        return os.path.abspath(spec) if os.path.exists(spec) else spec

    if args.model:
        cfg.elmo.source = source(args.model)
        return ElmoBiLM.from_pretrained(args.model)  # a folder, URL, hub id or release (elmo.hub)
    cfg.elmo.source = f"{source(args.options_file)} + {source(args.weight_file)}"
    return load_original(args.options_file, args.weight_file)


def _subset(instances: list, n: int) -> list:
    return instances[:n] if n > 0 else instances


def _check_train_args(args: argparse.Namespace) -> None:
    """The ELMo flags and the output folder, before any data is read."""
    if args.weight_file and not args.options_file:
        raise ValueError("--weight-file goes with --options-file (the original ELMo format)")
    if args.options_file and not args.weight_file:
        raise ValueError("--options-file needs --weight-file (the original ELMo weights hdf5)")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} is a file; give a folder for the task model")
    existing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if os.path.exists(os.path.join(args.out, n))]
    if existing and not args.force:
        raise ValueError(f"--out {args.out} already holds a task model ({', '.join(existing)}); pass "
                         "--force to replace it, or choose another folder")
    if os.path.isdir(args.out):
        for path in clean_orphans(args.out):  # temporary files of a killed or disk-full run
            logger.info("removed %s (a temporary file of an interrupted run)", path)


def _warn_unseen(name: str, data: list, train_data: list) -> None:
    """Dev/test labels (classify) or tag types (ner, srl) that training never saw: they can never
    be predicted, e.g. ``1.0`` in dev for ``1`` in training (a silent 0 otherwise)."""
    def kinds(x) -> list:
        if x.label is not None:
            return [x.label]
        return [t.split("-", 1)[1] if "-" in t else t for t in x.tags or [] if t != "O"]

    seen = {k for x in train_data for k in kinds(x)}
    unseen: dict = {}
    for x in data:
        for k in kinds(x):
            if k not in seen:
                unseen[k] = unseen.get(k, 0) + 1
    if unseen:
        listed = ", ".join(f"{k!r} ({n}x)" for k, n in sorted(unseen.items(), key=lambda kv: -kv[1])[:10])
        logger.warning("%s: labels never seen in training: %s; the model cannot predict them "
                       "(training has %s)", name, listed, sorted(seen)[:20])


def cmd_train(args: argparse.Namespace) -> int:
    _check_train_args(args)
    cfg = _config(args)
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    threads = torch.get_num_threads()
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    try:
        return _train(args, cfg)
    finally:
        torch.set_num_threads(threads)


def _train(args: argparse.Namespace, cfg: TaskConfig) -> int:
    task = get_task(cfg.task)
    train_data = _subset(task.read(args.train, cfg), cfg.data.max_train)
    dev_data = _subset(task.read(args.dev, cfg), cfg.data.max_eval)
    test_data = _subset(task.read(args.test, cfg), cfg.data.max_eval) if args.test else None
    for name, data in (("--dev " + args.dev, dev_data), ("--test " + str(args.test), test_data)):
        if data:
            _warn_unseen(name, data, train_data)
    labels = task.setup(train_data, cfg)
    train_targets = task.targets(train_data, cfg)
    head = cfg.head
    words = (Symbols.words([x.tokens for x in train_data], head.min_word_count, head.lowercase_words)
             if head.word_dim > 0 else None)
    bilm = _load_elmo(args, cfg)
    if bilm is not None:
        bilm.to(torch.device(cfg.train.device))
    save_setup(args.out, cfg, words, labels, bilm)  # the resolved config, before step 1
    logger.info("%s: %d train / %d dev%s examples, %d labels, %s", cfg.task, len(train_data), len(dev_data),
                f" / {len(test_data)} test" if test_data else "", len(labels),
                f"ELMo from {cfg.elmo.source}" if bilm is not None else "no ELMo (baseline)")

    cache = None
    if bilm is not None and not cfg.elmo.fine_tune and cfg.elmo.cache != "none":
        path = ((cfg.elmo.cache_file or os.path.join(args.out, "elmo_cache.h5")) if cfg.elmo.cache == "hdf5"
                else None)
        cache = LayerCache(bilm, path, cfg.elmo.cache_dtype, cfg.elmo.batch_size, cfg.train.progress)
        started = time.perf_counter()
        every = train_data + dev_data + (test_data or [])
        n = cache.fill(x.tokens for x in every)
        logger.info("ELMo layer cache: %d sentences computed in %.1f s (%d cached)", n,
                    time.perf_counter() - started, len(cache))
    model = task.build(cfg, len(words) if words is not None else 0, labels, bilm)
    maker = BatchMaker(words, labels, head.lowercase_words, model.encoder.needs_chars(cache is not None), cache,
                       model.encoder.char_width())
    summary = train(model, task, cfg, train_targets, dev_data, maker, labels,
                    log_path=os.path.join(args.out, "metrics.jsonl"),
                    on_best=lambda m, epoch, scores: save_weights(args.out, m, cfg))
    results = dict(summary)
    for name, data in (("dev", dev_data), ("test", test_data)):
        if data:
            scores, _ = evaluate(model, task, data, maker, labels, cfg, desc=name)
            results[name] = scores
            logger.info("%s %s: %.2f", name, task.METRIC, scores[task.METRIC])
    write_json_atomic(os.path.join(args.out, "results.json"), results)
    if cache is not None:
        cache.close()
    print(json.dumps({k: (v[task.METRIC] if isinstance(v, dict) else v) for k, v in results.items()}))
    return 0


def _read_for_prediction(task, cfg: TaskConfig, path: str):
    """Data to predict on: gold targets are kept when the file has them (NER: a second column)."""
    if cfg.task == "srl":
        return task.read(path, cfg)  # the predicates come from the argument columns
    if cfg.task == "ner" and not path.startswith("hf:"):
        with open(path, encoding="utf-8") as f:
            first = next((line.split() for line in f if line.split() and not line.startswith("-DOCSTART-")), [])
        return task.read(path, cfg, with_targets=len(first) > 1)
    return task.read(path, cfg, with_targets=False)


def cmd_evaluate(args: argparse.Namespace) -> int:
    cfg, task, words, labels, model = load_model(args.model_dir, args.device)
    cfg.train.progress = not args.quiet
    data = task.read(args.data, cfg)
    maker = BatchMaker(words, labels, cfg.head.lowercase_words, need_chars=model.encoder.needs_chars(),
                       max_characters=model.encoder.char_width())
    scores, _ = evaluate(model, task, data, maker, labels, cfg)
    if args.json:
        print(json.dumps({"task": cfg.task, "data": args.data, "metric": task.METRIC, **scores}))
    elif cfg.task in ("ner", "srl"):
        print(format_conlleval(scores))
    else:
        print(f"accuracy: {scores['accuracy']:6.2f}%; macro-F1: {scores['macro_f1']:6.2f} "
              f"({scores['examples']} examples)")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    model_files = [os.path.join(args.model_dir, n) for n in (CONFIG_NAME, VOCAB_NAME, WEIGHTS_NAME)]
    elmo_dir = os.path.join(args.model_dir, ELMO_DIR)
    if os.path.isdir(elmo_dir):
        model_files += [os.path.join(elmo_dir, n) for n in os.listdir(elmo_dir)]
    check_output(args.output, inputs=[args.data, *model_files], force=args.force, what="--output")
    clean_orphans(os.path.dirname(os.path.abspath(args.output)), glob.escape(os.path.basename(args.output)))
    cfg, task, words, labels, model = load_model(args.model_dir, args.device)
    cfg.train.progress = not args.quiet
    data = _read_for_prediction(task, cfg, args.data)
    maker = BatchMaker(words, labels, cfg.head.lowercase_words, need_chars=model.encoder.needs_chars(),
                       max_characters=model.encoder.char_width())
    predictions = task.decode(predict(model, data, maker, cfg), labels, cfg)
    with atomic_open(args.output, "w") as f:
        task.write(data, predictions, f)
    logger.info("wrote %d predictions to %s", len(data), args.output)
    return 0


def main(argv: Optional[list] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    threads = torch.get_num_threads()
    if (getattr(args, "threads", 0) or 0) > 0:
        torch.set_num_threads(args.threads)
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "split":
            paths = split_classification(args.data, args.out, args.label_column, args.dev, args.test, args.seed)
            print(json.dumps(paths))
            return 0
        return cmd_predict(args)
    except (ValueError, FileNotFoundError, KeyError, DiskFullError, DownloadError) as e:
        print(f"elmo-task {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())

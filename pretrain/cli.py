"""Command line: ``elmo-pretrain`` (train a biLM on a corpus) and ``elmo-export`` (original format).

    elmo-pretrain --train FILES... [--heldout FILES...] --out DIR
                  [--preset NAME | --config JSON] [--max-tokens N | --max-steps N | --epochs N]
                  [--resume] [--init MODEL] [--vocab FILE] [--set FIELD=VALUE ...] [options]
    elmo-pretrain evaluate MODEL --data FILES [--mode stream|sentence] [--json]   (pretrain.evaluate)
    elmo-export DIR [--options-file O --weight-file W [--vocab V]] [--onnx MODEL.onnx] [--force]

Under ``torchrun --nproc_per_node=N`` the same command trains with DDP (one data shard per
process, only rank 0 writes).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from elmo.config import CELLS, RECURRENT_DROPOUT_KINDS
from elmo.hub import DownloadError
from elmo.io import DiskFullError
from elmo.tokenize import TOKENIZERS
from pretrain.config import PRETRAIN_PRESETS, PretrainConfig, pretrain_preset

logger = logging.getLogger("pretrain")

# Convenience flags -> config fields (each also reachable with --set).
_FLAGS = {
    "tokenizer": "data.tokenizer", "heldout_fraction": "data.heldout_fraction",
    "batch_size": "data.batch_size", "window": "data.window", "batch_mode": "data.batch_mode",
    "max_vocab_size": "data.max_vocab_size", "min_count": "data.min_count",
    "streaming": "data.streaming", "softmax": "softmax.kind", "num_samples": "softmax.num_samples",
    "optimizer": "optim.optimizer", "lr": "optim.lr", "dropout": "optim.dropout",
    "max_tokens": "train.max_tokens", "max_steps": "train.max_steps", "epochs": "train.epochs",
    "seed": "train.seed", "device": "train.device", "precision": "train.precision",
    "threads": "train.threads", "eval_every": "train.eval_every", "compile": "train.compile",
    "checkpoint_every": "train.checkpoint_every",
    "cell": "model.bilm.cell", "recurrent_dropout_kind": "model.bilm.recurrent_dropout_kind",
    "recurrent_dropout": "model.bilm.recurrent_dropout",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="elmo-pretrain", description="Pretrain the ELMo bidirectional LM on a text corpus. "
        "'elmo-pretrain evaluate MODEL --data FILES' measures a trained model's perplexity "
        "(elmo-pretrain evaluate --help).",
        epilog="Every config field can be set with --set (dotted path), e.g. --set optim.lr=0.1 "
               "--set model.bilm.dim=256. The resolved config is saved as DIR/pretrain_config.json.")
    p.add_argument("--train", nargs="+", required=True, metavar="FILES",
                   help="text files, folders, globs (one sentence/paragraph per line), or a hub dataset name")
    p.add_argument("--heldout", nargs="+", metavar="FILES",
                   help="held-out text (default: a fraction of the training lines)")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory (model, checkpoints, metrics)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=list(PRETRAIN_PRESETS),
                     help="model size and training settings (default tiny; ptb-char-*: Kim et al. 2016)")
    src.add_argument("--config", metavar="JSON", help="a pretrain_config.json")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-tokens", type=int, help="training budget in tokens")
    budget.add_argument("--max-steps", type=int, help="training budget in steps")
    budget.add_argument("--epochs", type=float, help="training budget in passes over the corpus")
    p.add_argument("--resume", action="store_true", help="continue the run in DIR from its latest checkpoint")
    p.add_argument("--init", metavar="MODEL",
                   help="start from a model directory (ours or original options.json + hdf5) or a checkpoint")
    p.add_argument("--vocab", metavar="FILE", help="use this vocabulary (one word per line) instead of counting")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="overrides",
                   help="override a config field (repeatable)")
    p.add_argument("--tokenizer", choices=TOKENIZERS, help="how raw text is cut into tokens (elmo.tokenize)")
    p.add_argument("--heldout-fraction", type=float)
    p.add_argument("--batch-size", type=int, help="rows per process")
    p.add_argument("--window", type=int, help="tokens per row (window mode)")
    p.add_argument("--batch-mode", choices=["window", "sentence"])
    p.add_argument("--max-vocab-size", type=int)
    p.add_argument("--min-count", type=int)
    p.add_argument("--streaming", action="store_true", default=None, help="read the corpus lazily")
    p.add_argument("--softmax", choices=["sampled", "full", "adaptive"])
    p.add_argument("--num-samples", type=int, help="negatives of the sampled softmax")
    p.add_argument("--optimizer", choices=["adagrad", "adam", "sgd"])
    p.add_argument("--lr", type=float)
    p.add_argument("--dropout", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--compile", action="store_true", default=None,
                   help="run the model's forward and backward through torch.compile (window mode; "
                        "the first steps compile)")
    p.add_argument("--eval-every", type=int, help="steps between held-out evaluations")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    p.add_argument("--cell", choices=CELLS, help="recurrent cell of the biLM (default lstm; see elmo.cells)")
    p.add_argument("--recurrent-dropout-kind", choices=RECURRENT_DROPOUT_KINDS,
                   help="recurrent regularizer (with --recurrent-dropout RATE)")
    p.add_argument("--recurrent-dropout", type=float, help="rate of the recurrent regularizer")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def resolve_config(args: argparse.Namespace) -> PretrainConfig:
    """Preset or config file (or the run's saved config on --resume), then flags, then --set."""
    saved = os.path.join(args.out, "pretrain_config.json")
    if args.resume and os.path.isfile(saved):
        config = PretrainConfig.load(saved)
    elif args.config:
        config = PretrainConfig.load(args.config)
    else:
        config = pretrain_preset(args.preset or "tiny")
    budget_given = any(getattr(args, k) is not None for k in ("max_tokens", "max_steps", "epochs"))
    if budget_given:  # the command line's budget replaces the one in the config
        config.train.max_tokens = config.train.max_steps = config.train.epochs = None
    assignments = []
    for flag, field in _FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            assignments.append(f"{field}={_json(value)}")
    if args.no_progress:
        assignments.append("train.progress=false")
    for assignment in assignments + list(args.overrides):
        config = config.with_override(assignment)
    config.train.budget()  # exactly one budget
    return config


def _json(value) -> str:
    import json

    return json.dumps(value)


def _setup_logging(level: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=getattr(logging, level) if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s{' [rank %d]' % rank if rank else ''} "
                               "%(name)s: %(message)s", datefmt="%H:%M:%S")


def _last_good_checkpoint(out_dir: str) -> str:
    """Where a diverged run can continue from (no checkpoint is written after a non-finite step)."""
    from pretrain.checkpoint import list_checkpoints

    found = list_checkpoints(out_dir)
    if not found:
        return "no checkpoint was written; start again with a lower learning rate"
    step, path = found[-1]
    return (f"the last good checkpoint is {path} (step {step}): continue from it with --resume "
            "--set optim.lr=<lower>")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["evaluate"]:  # elmo-pretrain evaluate MODEL --data FILES (pretrain.evaluate)
        from pretrain.evaluate import main as evaluate_main
        return evaluate_main(argv[1:])

    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    from pretrain.lm import describe_perplexities
    from pretrain.run import run

    try:
        config = resolve_config(args)
        summary = run(config, args.train, args.out, heldout=args.heldout, resume=args.resume,
                      init=args.init, vocab_path=args.vocab)
    except (ValueError, FileNotFoundError, FileExistsError, DiskFullError, DownloadError) as e:
        print(f"elmo-pretrain: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # a diverged step (pretrain.train.NonFiniteError)
        print(f"elmo-pretrain: error: {e}; {_last_good_checkpoint(args.out)}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:
        return 0 if summary["completed"] else 130
    if not summary["completed"]:
        print(f"elmo-pretrain: stopped at step {summary['step']} of {summary['total_steps']}; "
              f"continue with: elmo-pretrain ... --out {args.out} --resume", file=sys.stderr)
        return 130
    held = summary.get("heldout")
    if held:
        print(f"held-out perplexity ({held['tokens_per_direction']:,} tokens per direction): "
              f"{describe_perplexities(held['forward_perplexity'], held['backward_perplexity'])}; "
              f"unigram baseline {held['unigram_perplexity_forward_targets']:.2f}")
    print(f"model written to {args.out} (load with ElmoBiLM.from_pretrained or elmo-embed --model)")
    return 0


def export_main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="elmo-export",
        description="Write a model in the original ELMo format (--options-file + --weight-file) "
                    "and/or as an ONNX graph for serving (--onnx).")
    p.add_argument("model_dir", metavar="MODEL", help="an elmo-pretrain output directory, or any model "
                                                      "(a folder, an http(s) URL, a hub id org/name[@rev])")
    p.add_argument("--options-file", help="the options.json to write")
    p.add_argument("--weight-file", help="the weights .hdf5 to write")
    p.add_argument("--vocab", help="also copy the vocabulary (one word per line) here")
    p.add_argument("--onnx", metavar="FILE", help="write the stateless inference biLM (char ids -> "
                   "layers, dynamic batch and length) as ONNX (extra [onnx])")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if bool(args.options_file) != bool(args.weight_file):
        print("elmo-export: error: --options-file and --weight-file go together", file=sys.stderr)
        return 2
    if not args.options_file and not args.onnx:
        print("elmo-export: error: nothing to write; give --options-file and --weight-file, --onnx FILE, "
              "or both", file=sys.stderr)
        return 2
    if args.vocab and not args.options_file:
        print("elmo-export: error: --vocab goes with --options-file/--weight-file", file=sys.stderr)
        return 2
    from pretrain.export import export_onnx_file, export_original

    written = []
    try:
        if args.options_file:
            export_original(args.model_dir, args.options_file, args.weight_file, args.vocab,
                            force=args.force)
            written += [args.options_file, args.weight_file] + ([args.vocab] if args.vocab else [])
        if args.onnx:
            export_onnx_file(args.model_dir, args.onnx, force=args.force)
            written.append(args.onnx)
    except (ValueError, OSError, ImportError) as e:  # also a full disk (elmo.io.DiskFullError)
        print(f"elmo-export: error: {e}", file=sys.stderr)
        return 2
    print("wrote " + " and ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())

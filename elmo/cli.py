"""``elmo-embed``: embed a text file (one whitespace-tokenized sentence per line) into HDF5.

    elmo-embed INPUT OUTPUT [--all | --top | --average]
               (--options-file O --weight-file W | --model DIR)
               [--batch-size N] [--device D] [--dtype float32|bfloat16] [--stateful] [--resume]

The output matches AllenNLP's ``elmo`` command: one float32 dataset per line named by its index
("0", "1", ...), shaped (L+1, n, 2P) with --all, (n, 2P) with --top / --average, plus
``sentence_to_index`` (a JSON string: line text -> key). It is written to OUTPUT.partial and
renamed when complete: an interrupted run never leaves a truncated OUTPUT, and ``--resume``
continues it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

import torch

from elmo.featurizer import Embedder

logger = logging.getLogger("elmo.embed")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="elmo-embed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="text file, one whitespace-tokenized sentence per line")
    ap.add_argument("output", help="HDF5 file to write")
    fmt = ap.add_mutually_exclusive_group()
    fmt.add_argument("--all", dest="output_format", action="store_const", const="all",
                     help="all layers, (L+1, n, 2P) per sentence (default)")
    fmt.add_argument("--top", dest="output_format", action="store_const", const="top",
                     help="the top layer, (n, 2P)")
    fmt.add_argument("--average", dest="output_format", action="store_const", const="average",
                     help="the average of the layers, (n, 2P)")
    ap.set_defaults(output_format="all")
    ap.add_argument("--model", help="model directory (this package's format, or one holding the "
                                    "original options.json + weights .hdf5)")
    ap.add_argument("--options-file", help="original options.json")
    ap.add_argument("--weight-file", help="original weights .hdf5")
    ap.add_argument("--batch-size", type=int, default=64, help="sentences per batch (default 64)")
    ap.add_argument("--max-tokens-per-batch", type=int, default=6000,
                    help="cap on padded tokens per batch, bounds memory (default 6000)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="weights and matmuls in bfloat16 are faster on hardware with bf16 support; "
                         "cell state and outputs stay float32")
    ap.add_argument("--stateful", action="store_true",
                    help="carry each row's LSTM state to the next batch, in input order, as the "
                         "original did (default: stateless, every sentence independent)")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted run's OUTPUT.partial")
    ap.add_argument("--no-sentence-index", action="store_true",
                    help="do not write the sentence_to_index dataset (saves memory on huge inputs)")
    ap.add_argument("--vocab", help="word list (one per line) whose character encodings are computed "
                                    "once and reused")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if bool(args.model) == bool(args.options_file or args.weight_file):
        print("elmo-embed: give either --model DIR or both --options-file and --weight-file",
              file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print(f"elmo-embed: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    if not os.path.isfile(args.input):
        print(f"elmo-embed: input file not found: {args.input}", file=sys.stderr)
        return 2
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    try:
        embedder = Embedder.from_pretrained(
            args.model, options_file=args.options_file, weight_file=args.weight_file,
            device=args.device, dtype=dtype, batch_size=args.batch_size,
            max_tokens_per_batch=args.max_tokens_per_batch, stateful=args.stateful)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"elmo-embed: cannot load the model: {e}", file=sys.stderr)
        return 2
    if args.vocab:
        with open(args.vocab, encoding="utf-8") as f:
            n = embedder.cache_vocabulary(line.strip() for line in f if line.strip())
        logger.info("cached the character encodings of %d words", n)

    with open(args.input, "rb") as f:
        total = sum(1 for _ in f)
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="sent", desc="elmo-embed", dynamic_ncols=True)
    try:
        n = embedder.embed_file(args.input, args.output, output=args.output_format,
                                batch_size=args.batch_size, resume=args.resume,
                                sentence_index=not args.no_sentence_index,
                                progress=bar.update if bar is not None else None)
    except KeyboardInterrupt:
        print(f"\nelmo-embed: interrupted; partial output kept in {args.output}.partial "
              "(rerun with --resume to continue)", file=sys.stderr)
        return 130
    except ValueError as e:
        print(f"elmo-embed: {e}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    logger.info("wrote %d sentences to %s (%s)", n, args.output, args.output_format)
    return 0


if __name__ == "__main__":
    sys.exit(main())

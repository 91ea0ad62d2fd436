"""Words -> character ids, exactly as the original ELMo (bilm-tf) encodes them.

A word becomes its UTF-8 bytes, truncated to ``max_characters_per_token - 2`` bytes, wrapped in
begin-of-word / end-of-word markers and padded to ``max_characters_per_token`` (50). Five special
"characters" extend the byte range: begin/end of sentence (256/257), begin/end of word (258/259)
and padding (260). Every id is then shifted by +1 so that 0 can mean "no token here" (the mask),
which is why the inference vocabulary has 262 character ids.

The sentence boundary tokens are one-character words: ``<S>`` is [bow, 256, eow, pad, ...] and
``</S>`` is [bow, 257, eow, pad, ...]; the literal strings "<S>" and "</S>" map to them too.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

MAX_CHARACTERS_PER_TOKEN = 50
BEGIN_SENTENCE_CHAR = 256
END_SENTENCE_CHAR = 257
BEGIN_WORD_CHAR = 258
END_WORD_CHAR = 259
PADDING_CHAR = 260
# Ids as stored in a char_ids tensor (after the +1 shift); 0 is reserved for "no token".
NUM_CHARACTER_IDS = 262

BOS_TOKEN = "<S>"
EOS_TOKEN = "</S>"


def _special_word(char: int, max_chars: int) -> np.ndarray:
    ids = np.full(max_chars, PADDING_CHAR, dtype=np.int64)
    ids[0], ids[1], ids[2] = BEGIN_WORD_CHAR, char, END_WORD_CHAR
    return ids + 1


@lru_cache(maxsize=200_000)
def _word_ids(word: str, max_chars: int) -> np.ndarray:
    if word == BOS_TOKEN:
        return _special_word(BEGIN_SENTENCE_CHAR, max_chars)
    if word == EOS_TOKEN:
        return _special_word(END_SENTENCE_CHAR, max_chars)
    data = word.encode("utf-8", "replace")[: max_chars - 2]
    ids = np.full(max_chars, PADDING_CHAR, dtype=np.int64)
    ids[0] = BEGIN_WORD_CHAR
    ids[1 : 1 + len(data)] = np.frombuffer(data, dtype=np.uint8)
    ids[1 + len(data)] = END_WORD_CHAR
    ids += 1
    ids.flags.writeable = False  # shared through the cache
    return ids


def word_to_char_ids(word: str, max_characters_per_token: int = MAX_CHARACTERS_PER_TOKEN) -> list[int]:
    """The ``max_characters_per_token`` character ids (already shifted by +1) of one word."""
    if not isinstance(word, str):
        raise TypeError(f"a token must be a str, got {type(word).__name__}: {word!r}")
    if max_characters_per_token < 3:
        raise ValueError(f"max_characters_per_token must be >= 3, got {max_characters_per_token}")
    return _word_ids(word, max_characters_per_token).tolist()


def bos_eos_char_ids(max_characters_per_token: int = MAX_CHARACTERS_PER_TOKEN) -> tuple[np.ndarray, np.ndarray]:
    """Character ids of the begin- and end-of-sentence tokens, each (max_characters_per_token,)."""
    return (_special_word(BEGIN_SENTENCE_CHAR, max_characters_per_token),
            _special_word(END_SENTENCE_CHAR, max_characters_per_token))


def batch_to_ids(
    sentences: Sequence[Sequence[str]],
    max_characters_per_token: int = MAX_CHARACTERS_PER_TOKEN,
    min_length: int = 0,
) -> torch.Tensor:
    """Tokenized sentences -> LongTensor (batch, max_len, max_characters_per_token).

    Rows of shorter sentences are padded with all-zero tokens (the mask). Boundary tokens are not
    added here: the model adds them. ``min_length`` pads the token axis to at least that length.
    """
    if isinstance(sentences, str):
        raise TypeError("batch_to_ids expects a list of tokenized sentences (list[list[str]]), got a str")
    sentences = list(sentences)
    for i, s in enumerate(sentences):
        if isinstance(s, str):
            raise TypeError(
                f"sentence {i} is a str ({s[:40]!r}); pass tokens, e.g. sentence.split()")
    max_len = max([len(s) for s in sentences] + [min_length])
    out = np.zeros((len(sentences), max_len, max_characters_per_token), dtype=np.int64)
    for i, sentence in enumerate(sentences):
        for j, word in enumerate(sentence):
            if not isinstance(word, str):
                raise TypeError(f"sentence {i}, token {j}: expected str, got {type(word).__name__}")
            out[i, j] = _word_ids(word, max_characters_per_token)
    return torch.from_numpy(out)

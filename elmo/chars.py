"""Words -> character ids, exactly as the original ELMo (bilm-tf) encodes them.

A word becomes its UTF-8 bytes, truncated to ``max_characters_per_token - 2`` bytes, wrapped in
begin-of-word / end-of-word markers and padded to ``max_characters_per_token`` (50). Five special
"characters" extend the byte range: begin/end of sentence (256/257), begin/end of word (258/259)
and padding (260). Every id is then shifted by +1 so that 0 can mean "no token here" (the mask),
which is why the inference vocabulary has 262 character ids.

The sentence boundary tokens are one-character words: ``<S>`` is [bow, 256, eow, pad, ...] and
``</S>`` is [bow, 257, eow, pad, ...]; the literal strings "<S>" and "</S>" map to them too.

A batch of sentences is a ``TokenBatch``: the character ids of each distinct token once
(U, 50) and, at every position, the row of its token (B, T), -1 where there is none. The model
encodes each distinct token once and gathers the vectors into place. ``batch_to_tokens`` builds
one from text; ``TokenBatch.from_char_ids`` from the plain (B, T, 50) ids of ``batch_to_ids``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Sequence

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


def check_sentence(sentence: Sequence[str], i: int) -> list:
    """Sentence number ``i`` as a list of tokens; a str (an untokenized sentence) is a TypeError."""
    if isinstance(sentence, str):
        raise TypeError(f"sentence {i} is a str ({sentence[:40]!r}); pass tokens, e.g. "
                        "sentence.split()")
    return list(sentence)


def _check_sentences(sentences: Sequence[Sequence[str]]) -> list:
    if isinstance(sentences, str):
        raise TypeError("expected a list of tokenized sentences (list[list[str]]), got a str")
    return [check_sentence(s, i) for i, s in enumerate(sentences)]


def batch_to_ids(
    sentences: Sequence[Sequence[str]],
    max_characters_per_token: int = MAX_CHARACTERS_PER_TOKEN,
    min_length: int = 0,
) -> torch.Tensor:
    """Tokenized sentences -> LongTensor (batch, max_len, max_characters_per_token).

    Rows of shorter sentences are padded with all-zero tokens (the mask). Boundary tokens are not
    added here: the model adds them. ``min_length`` pads the token axis to at least that length.
    """
    return batch_to_tokens(sentences, max_characters_per_token, min_length).char_ids()


class TokenBatch(NamedTuple):
    """Sentences as their distinct tokens' character ids and an index into them.

    ``token_chars`` (U, C) long: the character ids of each distinct token, no all-zero row;
    ``index`` (B, T) long: the row of ``token_chars`` at each position, -1 where there is no token.
    ``token_chars[index]`` at the real positions is what ``batch_to_ids`` gives. Sentence
    boundaries are not in it unless the producer put them there (the pretraining windows do);
    the model adds them (``elmo.model.add_sentence_boundaries``).
    """

    token_chars: torch.Tensor
    index: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """(B, T) bool: True where there is a token."""
        return self.index >= 0

    def char_ids(self) -> torch.Tensor:
        """The plain (B, T, C) character ids, all zero where there is no token."""
        if self.token_chars.shape[0] == 0:
            return self.token_chars.new_zeros((*self.index.shape, self.token_chars.shape[1]))
        ids = self.token_chars[self.index.clamp(min=0)]  # (B, T, C)
        return ids.masked_fill(~self.mask.unsqueeze(-1), 0)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TokenBatch":
        return TokenBatch(self.token_chars.to(device, non_blocking=non_blocking),
                          self.index.to(device, non_blocking=non_blocking))

    @classmethod
    def from_char_ids(cls, char_ids: torch.Tensor) -> "TokenBatch":
        """(B, T, C) ids (0 rows = no token) -> the distinct rows (sorted, as ``torch.unique``)."""
        if char_ids.dim() != 3:
            raise ValueError(f"char_ids must be (batch, tokens, characters), got {tuple(char_ids.shape)}")
        B, T, C = char_ids.shape
        flat = char_ids.reshape(B * T, C)
        real = (flat > 0).any(dim=-1)  # (B*T,)
        index = torch.full((B * T,), -1, dtype=torch.long, device=char_ids.device)
        if not torch.compiler.is_exporting() and not bool(real.any()):  # (a graph has no values)
            return cls(flat[:0].long(), index.view(B, T))
        rows = real.nonzero().squeeze(1)
        unique, inverse = torch.unique(flat[rows], dim=0, return_inverse=True)  # (U, C), (N,)
        return cls(unique.long(), index.index_put((rows,), inverse).view(B, T))


def distinct_tokens(sentences: Sequence[Sequence[str]], min_length: int = 0
                    ) -> tuple[list[str], np.ndarray]:
    """Tokenized sentences -> (the distinct tokens, in order of first appearance; the index
    (B, T) int64 of each position into them, -1 past a sentence's end)."""
    sentences = _check_sentences(sentences)
    T = max([len(s) for s in sentences] + [min_length])
    rows: dict[str, int] = {}
    index = np.full((len(sentences), T), -1, dtype=np.int64)
    for i, sentence in enumerate(sentences):
        for j, word in enumerate(sentence):
            if not isinstance(word, str):
                raise TypeError(f"sentence {i}, token {j}: expected str, got {type(word).__name__}")
            index[i, j] = rows.setdefault(word, len(rows))
    return list(rows), index


def words_to_char_ids(words: Sequence[str], max_characters_per_token: int = MAX_CHARACTERS_PER_TOKEN
                      ) -> torch.Tensor:
    """Distinct words -> their character ids (len(words), max_characters_per_token) long."""
    chars = np.zeros((len(words), max_characters_per_token), dtype=np.int64)
    for k, word in enumerate(words):
        chars[k] = _word_ids(word, max_characters_per_token)
    return torch.from_numpy(chars)


def batch_to_tokens(
    sentences: Sequence[Sequence[str]],
    max_characters_per_token: int = MAX_CHARACTERS_PER_TOKEN,
    min_length: int = 0,
) -> TokenBatch:
    """Tokenized sentences -> ``TokenBatch``: each distinct string encoded once, in order of first
    appearance; padding positions (up to the longest sentence or ``min_length``) have index -1.
    The model input equivalent to ``batch_to_ids`` (boundary tokens are added by the model)."""
    words, index = distinct_tokens(sentences, min_length)
    return TokenBatch(words_to_char_ids(words, max_characters_per_token), torch.from_numpy(index))

import pytest
import torch

from elmo.chars import MAX_CHARACTERS_PER_TOKEN, batch_to_ids, bos_eos_char_ids, word_to_char_ids

PAD = 261  # padding character 260, shifted by +1
BOW, EOW = 259, 260


def test_ascii_word_is_bytes_plus_one_wrapped_and_padded():
    ids = word_to_char_ids("cat")
    assert len(ids) == MAX_CHARACTERS_PER_TOKEN
    assert ids[:5] == [BOW, ord("c") + 1, ord("a") + 1, ord("t") + 1, EOW]
    assert ids[5:] == [PAD] * 45


def test_sentence_boundary_tokens():
    bos, eos = bos_eos_char_ids()
    assert bos.tolist()[:4] == [BOW, 257, EOW, PAD] and eos.tolist()[:4] == [BOW, 258, EOW, PAD]
    assert word_to_char_ids("<S>") == bos.tolist()
    assert word_to_char_ids("</S>") == eos.tolist()


def test_non_ascii_is_utf8_bytes():
    ids = word_to_char_ids("Zürich")
    assert ids[1:9] == [b + 1 for b in "Zürich".encode("utf-8")] + [EOW]
    assert ids[9] == PAD


def test_control_characters_are_kept_as_bytes():
    assert word_to_char_ids("a\x01\tb")[1:6] == [98, 2, 10, 99, EOW]


def test_long_token_is_truncated_to_48_bytes():
    ids = word_to_char_ids("x" * 300)
    assert len(ids) == 50 and ids[0] == BOW and ids[49] == EOW
    assert ids[1:49] == [ord("x") + 1] * 48
    # a multi-byte character cut in half keeps its first byte
    ids = word_to_char_ids("a" * 47 + "é")
    assert ids[48] == "é".encode()[0] + 1 and ids[49] == EOW


def test_batch_to_ids_pads_with_zero_tokens():
    ids = batch_to_ids([["a", "b", "c"], [], ["d"]])
    assert ids.shape == (3, 3, 50) and ids.dtype == torch.long
    assert ids[1].abs().sum() == 0
    assert ids[2, 1:].abs().sum() == 0
    assert ids[2, 0].tolist() == word_to_char_ids("d")


def test_batch_to_ids_empty_batch():
    assert batch_to_ids([]).shape == (0, 0, 50)


def test_batch_to_ids_rejects_strings():
    with pytest.raises(TypeError, match="pass tokens"):
        batch_to_ids(["not tokenized"])
    with pytest.raises(TypeError, match="list of tokenized sentences"):
        batch_to_ids("abc")
    with pytest.raises(TypeError, match="sentence 0, token 1"):
        batch_to_ids([["a", 3]])

"""One tokenizer module (elmo.tokenize) for pretraining and the tasks: each tokenizer's output,
and the old entry points (pretrain.corpus.get_tokenizer, tasks.readers.tokenize) are the same."""

import pytest

from elmo.tokenize import TOKENIZERS, get_tokenizer, tokenize

TEXT = "The U.S. didn't pay $7,500.5 to O'Neill's e-mail firm... (yes!)"


def test_each_tokenizer():
    assert tokenize(TEXT) == TEXT.split()
    assert tokenize(TEXT, "punct") == ["The", "U.S.", "did", "n't", "pay", "$", "7,500.5", "to", "O'Neill",
                                       "'s", "e-mail", "firm", "...", "(", "yes", "!", ")"]
    assert tokenize(TEXT, "simple") == ["The", "U.S", ".", "didn't", "pay", "$", "7", ",", "500.5", "to",
                                        "O'Neill's", "e-mail", "firm", ".", ".", ".", "(", "yes", "!", ")"]
    assert TOKENIZERS == ("whitespace", "punct", "simple")
    with pytest.raises(ValueError, match="unknown tokenizer 'spacy'; valid: whitespace, punct, simple"):
        get_tokenizer("spacy")


def test_pretraining_and_the_tasks_use_this_module():
    from pretrain.config import DataConfig
    from pretrain.corpus import get_tokenizer as corpus_tokenizer
    from tasks.readers import tokenize as reader_tokenize

    for name in TOKENIZERS:
        assert corpus_tokenizer(name)(TEXT) == tokenize(TEXT, name)
        assert reader_tokenize(TEXT, name) == tokenize(TEXT, name)
        assert DataConfig(tokenizer=name).tokenizer == name  # every tokenizer is a valid choice

"""Task configuration: one flat dataclass, per-task defaults, JSON on disk, ``--set FIELD=VALUE``.

Defaults follow the reference configurations of the ELMo paper's tasks (Peters et al. 2018,
sec. 5 and its appendix; AllenNLP's published experiment files): NER is a 2x200 BiLSTM-CRF on
BIOUL tags, Adam 1e-3, gradient norm 5, L2 0.1 on the scalar-mix weights; SRL a deep BiLSTM over
ELMo plus a predicate indicator with ELMo dropout 0.1; classification a BiLSTM with max and mean
pooling and an MLP.
"""

from __future__ import annotations

from dataclasses import dataclass

from elmo.config import JsonConfig, check_at_least, check_choice, check_fraction, set_field

TASKS = ("ner", "srl", "classify")
CACHES = ("memory", "hdf5", "none")


@dataclass
class TaskConfig(JsonConfig):
    task: str = "ner"
    # -- data --------------------------------------------------------------------------------
    data_format: str = "auto"  # ner: conll2003; srl: conll2012 | conll2005; classify: csv/tsv/jsonl/folder
    tag_column: int = -1  # ner: the column holding the tags
    text_column: str = "text"  # classify: header name or 0-based index
    label_column: str = "label"
    tokenizer: str = "whitespace"  # classify: whitespace | simple
    max_tokens: int = 0  # classify: truncate long texts (0 = keep all)
    max_train: int = 0  # use only the first N training examples (0 = all); a quick subset
    max_eval: int = 0  # likewise for dev / test
    tag_scheme: str = ""  # the model's scheme: bioul for ner, bio for srl ("" = that default)
    data_scheme: str = ""  # the training data's scheme (detected; predictions are written in it)
    # -- ELMo ----------------------------------------------------------------------------------
    use_elmo: bool = True
    elmo_source: str = ""  # where the ELMo came from (informative; the model folder holds a copy)
    fine_tune: bool = False  # train the biLM too (it then runs every step; no cache)
    do_layer_norm: bool = False
    elmo_dropout: float = 0.0  # on the scalar mix
    mix_l2: float = 0.1  # L2 penalty on the scalar-mix weights
    cache: str = "memory"  # memory | hdf5 | none (recompute the frozen biLM every batch)
    cache_file: str = ""  # hdf5 cache path ("" = OUT/elmo_cache.h5)
    cache_dtype: str = "float32"  # float32 (exact) | float16 (half the memory)
    elmo_batch_size: int = 64  # sentences per biLM batch when filling the cache
    # -- token features besides ELMo (the baseline's input; ELMo is added to it, as in the paper) --
    word_dim: int = 100  # trainable word embeddings (0 = none)
    min_word_count: int = 2  # rarer training words share the unknown-word vector
    lowercase_words: bool = False
    char_dim: int = 50  # char CNN output size (0 = none)
    char_filters: str = "1:16,2:32,3:64"  # width:count pairs of the char CNN (112 filters)
    # -- head ----------------------------------------------------------------------------------
    hidden_dim: int = 200  # per direction
    num_lstm_layers: int = 2
    lstm_residual: bool = False  # layers after the first add their input (srl's deep BiLSTM)
    dropout: float = 0.5
    predicate_dim: int = 100  # srl: predicate indicator embedding
    mlp_dim: int = 200  # classify
    # -- training ------------------------------------------------------------------------------
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    grad_clip: float = 5.0
    patience: int = 5
    seed: int = 0
    device: str = "cpu"
    num_threads: int = 0  # torch threads (0 = torch's default)
    progress: bool = True

    def __post_init__(self) -> None:
        check_choice("task", self.task, TASKS)
        check_choice("cache", self.cache, CACHES)
        check_choice("cache_dtype", self.cache_dtype, ("float32", "float16"))
        for name in ("epochs", "batch_size", "hidden_dim", "num_lstm_layers", "elmo_batch_size"):
            check_at_least(name, getattr(self, name), 1, integer=True)
        for name in ("dropout", "elmo_dropout"):
            check_fraction(name, getattr(self, name))
        self.char_filter_pairs()  # validates the string

    def char_filter_pairs(self) -> list:
        try:
            pairs = [[int(w), int(n)] for w, n in (p.split(":") for p in self.char_filters.split(","))]
        except ValueError:
            raise ValueError(f"char_filters must look like '1:25,2:50' (width:count,...), "
                             f"got {self.char_filters!r}") from None
        return pairs


TASK_DEFAULTS = {
    "ner": {"tag_scheme": "bioul", "elmo_dropout": 0.0},
    "srl": {"tag_scheme": "bio", "elmo_dropout": 0.1, "hidden_dim": 300, "num_lstm_layers": 4,
            "lstm_residual": True, "dropout": 0.1},
    "classify": {"elmo_dropout": 0.5, "hidden_dim": 300, "num_lstm_layers": 1, "dropout": 0.3},
}


def resolve_config(task: str, overrides: dict) -> TaskConfig:
    """Task defaults, then ``overrides`` (a --config file's keys, then --set values)."""
    base = {"task": task, **TASK_DEFAULTS[task]} if task in TASK_DEFAULTS else {"task": task}
    return TaskConfig.from_dict({**base, **overrides})


def parse_set(items: list[str]) -> dict:
    """``["lr=0.01", "use_elmo=false"]`` -> typed values for TaskConfig fields (``elmo.config.set_field``,
    the one ``--set`` of every command)."""
    data: dict = {}
    for item in items:
        data = set_field(TaskConfig, data, item)
    return data

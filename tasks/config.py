"""Task configuration: nested dataclasses, saved as JSON, ``--set SECTION.FIELD=VALUE``.

``TaskConfig`` holds the task's name and four sections: ``data`` (format, columns, tokenization,
subsets), ``elmo`` (whether and how the ELMo mix is used: dropout, L2, cache, fine-tuning),
``head`` (the model on top, one dataclass per task: ``NerHead``, ``SrlHead``, ``ClassifyHead``,
chosen by ``task``) and ``train`` (optimizer, epochs, batches, device).

Defaults follow the reference configurations of the ELMo paper's tasks (Peters et al. 2018,
sec. 5 and its appendix; AllenNLP's published experiment files): NER is a 2x200 BiLSTM-CRF on
BIOUL tags, Adam 1e-3, gradient norm 5, L2 0.1 on the scalar-mix weights; SRL a deep residual
4x300 BiLSTM over ELMo plus a predicate indicator with ELMo dropout 0.1; classification a BiLSTM
with max and mean pooling and an MLP, ELMo dropout 0.5.

Earlier versions wrote one flat object (``{"task": "ner", "lr": 0.001, "use_elmo": true, ...}``);
``TaskConfig.from_dict`` still reads it (``FLAT_NAMES`` maps each old name to its path), and
``--set`` takes the old names as well as the dotted paths (``--set lr=0.002`` is ``train.lr``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Optional

from elmo.config import (JsonConfig, check_at_least, check_choice, check_fields_at_least, check_fraction,
                         config_from_dict, set_field)
from elmo.tokenize import TOKENIZERS
from tasks.tags import SCHEMES

logger = logging.getLogger(__name__)

TASKS = ("ner", "srl", "classify")
CACHES = ("memory", "hdf5", "none")
DATA_FORMATS = ("auto", "conll2003", "conll2012", "conll2005", "csv", "tsv", "jsonl", "folder")
ELMO_DROPOUT = {"ner": 0.0, "srl": 0.1, "classify": 0.5}  # elmo.dropout when not given


@dataclass
class TaskDataConfig:
    format: str = "auto"  # ner: conll2003; srl: conll2012 | conll2005; classify: csv/tsv/jsonl/folder
    tag_column: int = -1  # ner: the column holding the tags
    text_column: str = "text"  # classify: header name or 0-based index
    label_column: str = "label"
    tokenizer: str = "whitespace"  # classify: one of elmo.tokenize.TOKENIZERS
    max_tokens: int = 0  # classify: truncate long texts (0 = keep all)
    max_train: int = 0  # use only the first N training examples (0 = all); a quick subset
    max_eval: int = 0  # likewise for dev / test
    scheme: str = ""  # the training data's tag scheme (detected; predictions are written in it)

    def __post_init__(self) -> None:
        check_choice("data.format", self.format, DATA_FORMATS)
        check_choice("data.tokenizer", self.tokenizer, TOKENIZERS)
        check_fields_at_least("data", self, 0, "max_tokens", "max_train", "max_eval", integer=True)
        if self.scheme:
            check_choice("data.scheme", self.scheme, SCHEMES)


@dataclass
class TaskElmoConfig:
    """How a task model uses ELMo (the biLM itself is the model folder's ``elmo/`` copy)."""

    use: bool = True  # false: the baseline, the same head without the biLM
    source: str = ""  # where the ELMo came from (informative; the model folder holds a copy)
    fine_tune: bool = False  # train the biLM too (it then runs every step; no cache)
    do_layer_norm: bool = False
    dropout: Optional[float] = None  # on the scalar mix (None: the task's, ELMO_DROPOUT)
    mix_l2: float = 0.1  # L2 penalty on the scalar-mix weights
    cache: str = "memory"  # memory | hdf5 | none (recompute the frozen biLM every batch)
    cache_file: str = ""  # hdf5 cache path ("" = OUT/elmo_cache.h5)
    cache_dtype: str = "float32"  # float32 (exact) | float16 (half the memory)
    batch_size: int = 64  # sentences per biLM batch when filling the cache

    def __post_init__(self) -> None:
        check_choice("elmo.cache", self.cache, CACHES)
        check_choice("elmo.cache_dtype", self.cache_dtype, ("float32", "float16"))
        check_fields_at_least("elmo", self, 1, "batch_size", integer=True)
        check_at_least("elmo.mix_l2", self.mix_l2, 0)
        if self.dropout is not None:
            check_fraction("elmo.dropout", self.dropout)


@dataclass
class HeadConfig:
    """What every head has: token features besides ELMo (the baseline's input; ELMo is added to
    it, as in the paper) and a BiLSTM over them."""

    word_dim: int = 100  # trainable word embeddings (0 = none)
    min_word_count: int = 2  # rarer training words share the unknown-word vector
    lowercase_words: bool = False
    char_dim: int = 50  # char CNN output size (0 = none)
    char_filters: str = "1:16,2:32,3:64"  # width:count pairs of the char CNN (112 filters)
    hidden_dim: int = 200  # per direction
    num_lstm_layers: int = 2
    lstm_residual: bool = False  # layers after the first add their input (srl's deep BiLSTM)
    dropout: float = 0.5

    def __post_init__(self) -> None:
        check_fields_at_least("head", self, 0, "word_dim", "char_dim", integer=True)
        check_fields_at_least("head", self, 1, "min_word_count", "hidden_dim", "num_lstm_layers", integer=True)
        check_fraction("head.dropout", self.dropout)
        self.char_filter_pairs()  # validates the string

    def char_filter_pairs(self) -> list:
        try:
            pairs = [[int(w), int(n)] for w, n in (p.split(":") for p in self.char_filters.split(","))]
        except ValueError:
            raise ValueError(f"head.char_filters must look like '1:25,2:50' (width:count,...), "
                             f"got {self.char_filters!r}") from None
        return pairs


@dataclass
class NerHead(HeadConfig):
    tag_scheme: str = "bioul"  # the scheme the CRF learns in (the data's is data.scheme)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("head.tag_scheme", self.tag_scheme, SCHEMES)


@dataclass
class SrlHead(HeadConfig):
    hidden_dim: int = 300
    num_lstm_layers: int = 4
    lstm_residual: bool = True
    dropout: float = 0.1
    predicate_dim: int = 100  # the predicate indicator's embedding

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields_at_least("head", self, 1, "predicate_dim", integer=True)


@dataclass
class ClassifyHead(HeadConfig):
    hidden_dim: int = 300
    num_lstm_layers: int = 1
    dropout: float = 0.3
    mlp_dim: int = 200

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields_at_least("head", self, 1, "mlp_dim", integer=True)


HEADS = {"ner": NerHead, "srl": SrlHead, "classify": ClassifyHead}


@dataclass
class TaskTrainConfig:
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3  # Adam
    grad_clip: float = 5.0  # gradient norm (0 = none)
    patience: int = 5  # epochs without a dev improvement before stopping
    seed: int = 0
    device: str = "cpu"
    num_threads: int = 0  # torch threads (0 = torch's default)
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields_at_least("train", self, 1, "epochs", "batch_size", "patience", integer=True)
        check_fields_at_least("train", self, 0, "num_threads", integer=True)


@dataclass
class TaskConfig(JsonConfig):
    task: str = "ner"
    data: TaskDataConfig = field(default_factory=TaskDataConfig)
    elmo: TaskElmoConfig = field(default_factory=TaskElmoConfig)
    head: Optional[HeadConfig] = None  # HEADS[task]; None: its defaults
    train: TaskTrainConfig = field(default_factory=TaskTrainConfig)

    def __post_init__(self) -> None:
        check_choice("task", self.task, TASKS)
        kind = HEADS[self.task]
        if self.head is None:
            self.head = kind()
        elif isinstance(self.head, dict):  # built from JSON (elmo.config.config_from_dict)
            self.head = config_from_dict(kind, self.head, ".head")
        elif type(self.head) is not kind:
            raise ValueError(f"head must be a {kind.__name__} for task {self.task!r}, "
                             f"got a {type(self.head).__name__}")
        if self.elmo.dropout is None:
            self.elmo.dropout = ELMO_DROPOUT[self.task]

    @classmethod
    def from_dict(cls, data: dict) -> "TaskConfig":
        """From the nested layout, or the flat one of earlier versions: a flat record's missing
        fields take the flat defaults of then (a file written before ``lstm_residual`` existed
        trained without it), not today's per-task ones."""
        if not isinstance(data, dict):
            raise ValueError(f"config: expected a JSON object for TaskConfig, got {type(data).__name__}")
        if any(key in FLAT_NAMES for key in data) and not any(key in data for key in (*SECTIONS, "head")):
            data = {**FLAT_DEFAULTS, **data}
        return config_from_dict(cls, nest(data)[0])

    def with_override(self, assignment: str) -> "TaskConfig":
        """A copy with one ``--set FIELD=VALUE`` applied (``head.hidden_dim=64`` or ``hidden_dim=64``)."""
        return type(self).from_dict(apply_set(self.to_dict(), self.task, assignment))


SECTIONS = {"data": TaskDataConfig, "elmo": TaskElmoConfig, "train": TaskTrainConfig}
# The flat fields of earlier versions -> their path now.
FLAT_NAMES = {
    "data_format": "data.format", "data_scheme": "data.scheme",
    **{n: f"data.{n}" for n in ("tag_column", "text_column", "label_column", "tokenizer", "max_tokens",
                                "max_train", "max_eval")},
    "use_elmo": "elmo.use", "elmo_source": "elmo.source", "elmo_dropout": "elmo.dropout",
    "elmo_batch_size": "elmo.batch_size",
    **{n: f"elmo.{n}" for n in ("fine_tune", "do_layer_norm", "mix_l2", "cache", "cache_file", "cache_dtype")},
    **{f.name: f"head.{f.name}" for head in HEADS.values() for f in dataclasses.fields(head)},
    **{f.name: f"train.{f.name}" for f in dataclasses.fields(TaskTrainConfig)},
}


# What a flat record of earlier versions meant by a field it did not list.
FLAT_DEFAULTS = {**{f.name: f.default for f in dataclasses.fields(HeadConfig)}, "elmo_dropout": 0.0}


def _valid_names(task: str) -> str:
    sections = {**SECTIONS, "head": HEADS.get(task, HeadConfig)}
    paths = ["task"] + [f"{name}.{f.name}" for name, kind in sections.items() for f in dataclasses.fields(kind)]
    return f"{paths}, or a flat name of earlier versions: {sorted(FLAT_NAMES)}"


def nest(data: dict) -> tuple[dict, list]:
    """(the nested layout of ``data``, the flat names it had that its task's head does not have).

    ``data`` may mix both layouts. A flat name that belongs to another task's head (``mlp_dim``
    of a ner config: every flat file of earlier versions lists them all) had no effect then
    and is left out now; any other unknown key is an error that lists the valid ones."""
    task = data.get("task", "ner")
    head_fields = {f.name for f in dataclasses.fields(HEADS[task])} if task in HEADS else set()
    out: dict = {}
    ignored = []
    for key, value in data.items():
        if key == "task":
            out[key] = value
        elif key in SECTIONS or key == "head":
            if not isinstance(value, dict):
                raise ValueError(f"config.{key}: expected a JSON object (a section), "
                                 f"got {type(value).__name__}")
            out.setdefault(key, {}).update(value)
        elif key in FLAT_NAMES:
            section, name = FLAT_NAMES[key].split(".")
            if section == "head" and name not in head_fields:
                ignored.append(key)
                continue
            if section == "head" and name == "tag_scheme" and value == "":
                continue  # "" meant the task's default scheme
            out.setdefault(section, {})[name] = value
        else:
            raise ValueError(f"config: unknown key {key!r}; valid keys: {_valid_names(task)}")
    return out, ignored


def _path(name: str, task: str) -> str:
    """An old flat name -> its dotted path; a dotted path or ``task`` as it is."""
    if name in FLAT_NAMES:
        return FLAT_NAMES[name]
    if name == "task" or name.split(".")[0] in (*SECTIONS, "head"):
        return name
    raise ValueError(f"--set {name}: unknown field {name!r}; valid fields: {_valid_names(task)}")


def apply_set(data: dict, task: str, item: str) -> dict:
    """``data`` (a nested config dictionary, partial or complete) with one ``--set FIELD=VALUE``
    applied. FIELD is a dotted path (``train.lr``, ``head.hidden_dim``) or an old flat name
    (``lr``); the value is typed by ``elmo.config.set_field``, the ``--set`` of every command."""
    if "=" not in item:
        raise ValueError(f"--set expects FIELD=VALUE (e.g. train.lr=0.002 or lr=0.002), got {item!r}")
    name, value = item.split("=", 1)
    name = name.strip()
    path = _path(name, task)
    section, _, field_name = path.partition(".")
    try:
        if section != "head":
            return set_field(TaskConfig, data, f"{path}={value}")
        names = [f.name for f in dataclasses.fields(HEADS[task])]
        if not field_name:
            raise ValueError(f"--set head: head is a section; set one of its fields: {sorted(names)}")
        if name in FLAT_NAMES and field_name not in names:
            logger.info("--set %s: the %s head has no %s (a field of another task's head); ignored",
                        name, task, field_name)
            return data
        return {**data, "head": set_field(HEADS[task], data.get("head", {}), f"{field_name}={value}")}
    except ValueError as e:  # set_field's message names the field as it was given to it
        message = str(e).replace(f"--set {path if section != 'head' else field_name}:", f"--set {name}:", 1)
        if section == "head":
            message = message.replace("in the config)", f"in head, the {task} head)")
        raise ValueError(message) from None


def parse_set(items: list[str], task: str = "ner", data: Optional[dict] = None) -> dict:
    """``["lr=0.002", "elmo.use=false"]`` -> the nested dictionary of those fields, typed (applied
    on top of ``data`` when given)."""
    out: dict = dict(data or {})
    for item in items:
        out = apply_set(out, task, item)
    return out


def resolve_config(task: str, overrides: dict) -> TaskConfig:
    """The task's defaults, then ``overrides`` (a --config file's keys, then --set values): nested
    or flat. Flat names of another task's head are ignored (logged)."""
    nested, ignored = nest({**overrides, "task": task})
    if ignored:
        logger.info("the %s head has no %s (fields of another task's head); ignored", task,
                    ", ".join(ignored))
    return TaskConfig.from_dict(nested)

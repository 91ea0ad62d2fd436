"""Model configuration: plain dataclasses, saved as JSON, convertible to the original options.json.

``ElmoConfig`` nests one dataclass per component. Loading rejects unknown keys and lists the valid
ones, so a typo in a config file is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import typing
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from elmo.chars import MAX_CHARACTERS_PER_TOKEN, NUM_CHARACTER_IDS
from elmo.io import write_json_atomic  # noqa: F401  (re-exported: callers import it from here)

ACTIVATIONS = ("relu", "tanh")
# Recurrent cells of the biLM (see elmo.cells) and recurrent regularizers (elmo.cells.regularizers).
CELLS = ("lstm", "elman", "jordan", "gru", "peephole", "cifg", "residual-lstm", "rhn", "sru", "qrnn")
RECURRENT_DROPOUT_KINDS = ("variational", "semeniuta", "zoneout")


class JsonConfig:
    """JSON for config dataclasses (mixed into each top-level config): ``to_dict``, ``from_dict``
    (nested dataclass fields are built recursively; unknown keys are an error that lists the
    valid ones), ``save`` (atomic) and ``load``."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        return config_from_dict(cls, data)

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike):
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data)

    def with_override(self, assignment: str):
        """A copy with one ``FIELD=VALUE`` applied (``set_field``: ``optim.lr=0.1``, ``lr=0.002``)."""
        return type(self).from_dict(set_field(type(self), self.to_dict(), assignment))


@dataclass
class CharCNNConfig:
    """Character encoder: embedding -> convolutions (max-pool, activation) -> highway -> projection.

    ``projection`` False leaves the projection out: the first biLM layer reads the ``n_filters``
    highway features, as in Kim et al. 2016's language models. The token layer then differs in size
    from the LSTM layers, so such a model is a language model only (its ELMo layers cannot be
    mixed), and it has no original-format (bilm-tf) equivalent unless ``n_filters`` equals the
    projection size.
    """

    embedding_dim: int = 16
    filters: list = field(default_factory=lambda: [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256],
                                                   [6, 512], [7, 1024]])
    n_highway: int = 2
    activation: str = "relu"
    n_characters: int = NUM_CHARACTER_IDS
    max_characters_per_token: int = MAX_CHARACTERS_PER_TOKEN
    projection: bool = True

    def __post_init__(self) -> None:
        _positive(self, "embedding_dim", "n_characters", "max_characters_per_token")
        if not isinstance(self.projection, bool):
            raise ValueError(f"char_cnn.projection must be true or false, got {self.projection!r}")
        check_at_least("char_cnn.n_highway", self.n_highway, 0, integer=True)
        check_choice("char_cnn.activation", self.activation, ACTIVATIONS)
        if not self.filters:
            raise ValueError("char_cnn.filters must list at least one [width, count] pair")
        filters = []
        for f in self.filters:
            if len(f) != 2 or int(f[0]) < 1 or int(f[1]) < 1:
                raise ValueError(f"char_cnn.filters entries must be [width >= 1, count >= 1], got {f!r}")
            if int(f[0]) > self.max_characters_per_token:
                raise ValueError(f"char_cnn.filters width {f[0]} exceeds max_characters_per_token "
                                 f"{self.max_characters_per_token}")
            filters.append([int(f[0]), int(f[1])])
        self.filters = filters
        if self.n_characters < NUM_CHARACTER_IDS - 1:
            raise ValueError(f"char_cnn.n_characters must be >= {NUM_CHARACTER_IDS - 1} (bytes + "
                             f"5 special characters), got {self.n_characters}")

    @property
    def n_filters(self) -> int:
        return sum(n for _, n in self.filters)


@dataclass
class BiLMConfig:
    """The bidirectional recurrent stack: ``n_layers`` layers per direction."""

    dim: int = 4096                 # LSTM cell (memory) size
    projection_dim: int = 512       # size of each layer's output per direction (and of the char encoder)
    n_layers: int = 2
    cell_clip: Optional[float] = 3.0
    proj_clip: Optional[float] = 3.0
    use_skip_connections: bool = True  # layer k >= 1 output += its input (residual)
    # Beyond the original (elmo.cells); the defaults are the original LSTM, unchanged.
    cell: str = "lstm"  # one of CELLS
    recurrent_dropout_kind: Optional[str] = None  # one of RECURRENT_DROPOUT_KINDS, or None
    recurrent_dropout: float = 0.0  # its rate (zoneout: the chance a unit keeps its old value)
    transition_depth: int = 1  # non-linear steps from h_{t-1} to h_t (rhn: the recurrence depth)
    input_skip_connections: bool = False  # layer k >= 1 input += the token layer (Graves 2013)

    def __post_init__(self) -> None:
        _positive(self, "dim", "projection_dim", "n_layers", "transition_depth")
        for name in ("cell_clip", "proj_clip"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"bilm.{name} must be positive or null (no clipping), got {value}")
        if self.cell not in CELLS:
            raise ValueError(f"bilm.cell must be one of {', '.join(CELLS)}; got {self.cell!r}")
        kind = self.recurrent_dropout_kind
        if kind is not None and kind not in RECURRENT_DROPOUT_KINDS:
            raise ValueError(f"bilm.recurrent_dropout_kind must be one of "
                             f"{', '.join(RECURRENT_DROPOUT_KINDS)} or null; got {kind!r}")
        check_fraction("bilm.recurrent_dropout", self.recurrent_dropout)
        if kind is None and self.recurrent_dropout > 0:
            raise ValueError(f"bilm.recurrent_dropout is {self.recurrent_dropout} but "
                             "recurrent_dropout_kind is null; set recurrent_dropout_kind to one of "
                             f"{', '.join(RECURRENT_DROPOUT_KINDS)}")
        if kind == "semeniuta" and self.cell in ("elman", "jordan"):
            raise ValueError(f"bilm.recurrent_dropout_kind 'semeniuta' drops the candidate update, "
                             f"which the {self.cell} cell does not have; use variational or zoneout")
        if self.transition_depth > 1 and self.cell in ("sru", "qrnn"):
            raise ValueError(f"bilm.transition_depth must be 1 for the {self.cell} cell (its "
                             f"recurrence is element-wise by design); got {self.transition_depth}")


@dataclass
class ElmoConfig(JsonConfig):
    char_cnn: CharCNNConfig = field(default_factory=CharCNNConfig)
    bilm: BiLMConfig = field(default_factory=BiLMConfig)

    def __post_init__(self) -> None:
        if not self.char_cnn.projection and self.bilm.input_skip_connections \
                and self.char_cnn.n_filters != self.bilm.projection_dim:
            raise ValueError(f"bilm.input_skip_connections adds the token layer ({self.char_cnn.n_filters} "
                             f"features without char_cnn.projection) to layers of size "
                             f"{self.bilm.projection_dim}; set char_cnn.projection true")

    @property
    def output_dim(self) -> int:
        """Size of every ELMo layer: forward and backward concatenated."""
        return 2 * self.bilm.projection_dim

    @property
    def token_dim(self) -> int:
        """Size of the character encoder's token vectors (the first biLM layer's input)."""
        return self.bilm.projection_dim if self.char_cnn.projection else self.char_cnn.n_filters

    @property
    def num_layers(self) -> int:
        """Number of ELMo layers: the character layer plus one per biLM layer."""
        return self.bilm.n_layers + 1

    # -- the original options.json ------------------------------------------------------------
    @classmethod
    def from_options(cls, options: dict) -> "ElmoConfig":
        """Build from the original ``options.json`` schema ({"lstm": ..., "char_cnn": ...})."""
        try:
            lstm, cnn = options["lstm"], options["char_cnn"]
            return cls(
                char_cnn=CharCNNConfig(
                    embedding_dim=cnn["embedding"]["dim"],
                    filters=cnn["filters"],
                    n_highway=cnn["n_highway"],
                    activation=cnn.get("activation", "relu"),
                    # Training-time options say 261 (ids unshifted); the +1-shifted ids need 262.
                    n_characters=max(int(cnn.get("n_characters", NUM_CHARACTER_IDS)), NUM_CHARACTER_IDS),
                    max_characters_per_token=cnn.get("max_characters_per_token",
                                                     MAX_CHARACTERS_PER_TOKEN),
                ),
                bilm=BiLMConfig(
                    dim=lstm["dim"] if "dim" in lstm else lstm["projection_dim"],
                    projection_dim=lstm["projection_dim"],
                    n_layers=lstm.get("n_layers", 2),
                    cell_clip=lstm.get("cell_clip"),
                    proj_clip=lstm.get("proj_clip"),
                    use_skip_connections=lstm.get("use_skip_connections", False),
                ),
            )
        except KeyError as e:
            raise ValueError(f"options.json is missing the key {e}; expected the original schema "
                             '{"lstm": {"dim", "projection_dim", ...}, "char_cnn": {"embedding": '
                             '{"dim"}, "filters", "n_highway", ...}}') from None

    def to_options(self) -> dict:
        """The original ``options.json`` dictionary for this configuration."""
        c, b = self.char_cnn, self.bilm
        if not c.projection and c.n_filters != b.projection_dim:
            raise ValueError(f"char_cnn.projection is false and the {c.n_filters} character features "
                             f"differ from lstm.projection_dim {b.projection_dim}: the original format "
                             "has no such model (it projects whenever the sizes differ); keep it in "
                             "this package's format")
        return {
            "lstm": {"dim": b.dim, "projection_dim": b.projection_dim, "n_layers": b.n_layers,
                     "cell_clip": b.cell_clip, "proj_clip": b.proj_clip,
                     "use_skip_connections": b.use_skip_connections},
            "char_cnn": {"activation": c.activation, "embedding": {"dim": c.embedding_dim},
                         "filters": copy.deepcopy(c.filters), "n_highway": c.n_highway,
                         "n_characters": c.n_characters,
                         "max_characters_per_token": c.max_characters_per_token},
        }


def _sizes(dim: int, proj: int, filters: list, n_highway: int, emb: int = 16) -> ElmoConfig:
    return ElmoConfig(CharCNNConfig(embedding_dim=emb, filters=filters, n_highway=n_highway),
                      BiLMConfig(dim=dim, projection_dim=proj))


_SMALL_FILTERS = [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]]
PRESETS = {
    # The released sizes (elmo_2x{dim}_{proj}_2048cnn_{n}xhighway).
    "original": lambda: _sizes(4096, 512, _SMALL_FILTERS, 2),
    "medium": lambda: _sizes(2048, 256, _SMALL_FILTERS, 1),
    "small": lambda: _sizes(1024, 128, _SMALL_FILTERS, 1),
    # Trains on two CPU cores in minutes.
    "tiny": lambda: _sizes(512, 64, [[1, 32], [2, 32], [3, 64], [4, 128], [5, 128]], 1, emb=16),
}


def preset(name: str) -> ElmoConfig:
    """A fresh ``ElmoConfig`` for a named size: original, medium, small or tiny."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


# -- checks of config values: the one set every config of the package uses -------------------
def check_choice(name: str, value: Any, options: Sequence) -> None:
    """``value`` must be one of ``options``; the error names the field and lists them."""
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}")


def check_at_least(name: str, value: Any, minimum: float, integer: bool = False) -> None:
    """A number (an integer with ``integer``) >= ``minimum``; None passes (an optional field)."""
    if value is None:
        return
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
        what = ("a positive integer" if minimum == 1 else f"an integer >= {minimum}") if integer \
            else f"a number >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")


def check_fields_at_least(section: str, obj: Any, minimum: float, *names: str,
                          integer: bool = False) -> None:
    """``check_at_least`` for the fields ``names`` of ``obj``, named ``section.field``."""
    for name in names:
        check_at_least(f"{section}.{name}", getattr(obj, name), minimum, integer)


def check_fraction(name: str, value: Any) -> None:
    """A rate in [0, 1): dropout, a held-out fraction."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def _positive(obj: Any, *names: str) -> None:
    check_fields_at_least(type(obj).__name__, obj, 1, *names, integer=True)


def set_field(cls: type, data: dict, assignment: str) -> dict:
    """``data`` (the dictionary of config dataclass ``cls``, complete or partial) with one
    ``FIELD=VALUE`` applied: the ``--set`` of every command.

    FIELD is a dotted path through nested sections (``optim.lr``, ``model.bilm.dim``) or a plain
    field name (``lr``). VALUE is read for the field's type: ``true/false/yes/no/1/0`` for a
    flag, a number for a number, the text as it is for a string (``--set label_column=0`` stays
    "0"), ``null`` for an optional field, JSON for a list (``model.char_cnn.filters=[[1,4]]``).
    A value that does not fit is left to the config's own checks, which name the field; if those
    accept it, the error says which type was expected."""
    if "=" not in assignment:
        raise ValueError(f"--set expects FIELD=VALUE (e.g. optim.lr=0.1 or lr=0.002), got {assignment!r}")
    path, raw = assignment.split("=", 1)
    path = path.strip()
    keys = path.split(".")
    out = copy.deepcopy(data)
    node, owner = out, cls
    for i, key in enumerate(keys):
        names = [f.name for f in dataclasses.fields(owner)]
        if key not in names:
            where = ".".join(keys[:i]) or "the config"
            raise ValueError(f"--set {path}: unknown field {key!r} (there is no field {key!r} in "
                             f"{where}); valid fields: {sorted(names)}")
        hint = typing.get_type_hints(owner)[key]
        last = i == len(keys) - 1
        if dataclasses.is_dataclass(hint) and last:
            raise ValueError(f"--set {path}: {path} is a section; set one of its fields: "
                             f"{sorted(f.name for f in dataclasses.fields(hint))}")
        if not last:
            if not dataclasses.is_dataclass(hint):
                raise ValueError(f"--set {path}: {'.'.join(keys[:i + 1])} is a value, not a section")
            node, owner = node.setdefault(key, {}), hint
            continue
        value, fits = _parse_value(raw, hint)
        node[key] = value
        if not fits:
            config_from_dict(cls, out)  # the config's own check names the field, if it has one
            raise ValueError(f"--set {path}: {raw!r} is not a valid {_type_name(hint)}")
    return out


def _parse_value(raw: str, hint: Any) -> tuple[Any, bool]:
    """(value, whether it fits the type ``hint``) for the text of a ``--set``."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) is typing.Union and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    text = raw.strip()
    if optional and text.lower() in ("null", "none"):
        return None, True
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = raw
    if base is bool:
        if text.lower() in ("true", "yes", "on", "1"):
            return True, True
        if text.lower() in ("false", "no", "off", "0"):
            return False, True
        return parsed, False
    if base is int:
        return parsed, isinstance(parsed, int) and not isinstance(parsed, bool)
    if base is float:
        fits = isinstance(parsed, (int, float)) and not isinstance(parsed, bool)
        return (float(parsed) if fits else parsed), fits
    if base is str:
        return (parsed if isinstance(parsed, str) else raw), True  # '"cpu"' (JSON) or cpu
    return parsed, True  # lists, dicts, anything else: JSON, else the text


def _type_name(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return getattr(args[0] if args else hint, "__name__", str(hint))


def config_from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclass fields."""
    if not isinstance(data, dict):
        raise ValueError(f"config{where}: expected a JSON object for {cls.__name__}, "
                         f"got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"config{where}: unknown key(s) {unknown} for {cls.__name__}; "
                         f"valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: config_from_dict(hints[name], value, f"{where}.{name}")
              if dataclasses.is_dataclass(hints[name]) else value for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # e.g. a string where a number was expected
        raise ValueError(f"config{where}: {e}") from None

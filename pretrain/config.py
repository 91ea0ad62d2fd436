"""Pretraining configuration: plain dataclasses, saved as JSON next to the run.

``PretrainConfig`` nests the model (``elmo.ElmoConfig``) and one dataclass per stage: data,
softmax, optimizer, training loop. Every field can be overridden from the command line with a
dotted path (``--set optim.lr=0.1``, ``--set model.bilm.dim=256``; ``elmo.config.set_field``).
Loading rejects unknown keys and lists the valid ones. Defaults follow the original training
setup (bilm-tf): 20-token windows with state carried across batches, 8192 sampled negatives,
Adagrad lr 0.2 with initial accumulator 1.0, gradient norm clip 10, dropout 0.1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from elmo.config import (PRESETS, BiLMConfig, CharCNNConfig, ElmoConfig, JsonConfig, check_choice,
                         check_fields_at_least, check_fraction, preset)
from elmo.tokenize import TOKENIZERS

BATCH_MODES = ("window", "sentence")
SOFTMAX_KINDS = ("sampled", "full", "adaptive")
OPTIMIZERS = ("adagrad", "adam", "sgd")
SCHEDULES = ("constant", "linear", "cosine", "plateau")
WINDOW_ORDERS = ("shuffled", "contiguous")
EVAL_MODES = ("sentence", "stream")
DIRECTIONS = ("both", "forward")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class DataConfig:
    tokenizer: str = "whitespace"      # "punct" also splits punctuation off words (raw prose)
    heldout_fraction: float = 0.02     # of the lines, when no held-out file is given
    max_vocab_size: Optional[int] = None   # including <S>, </S>, <UNK>
    min_count: int = 1
    batch_mode: str = "window"         # "window": the original's truncated BPTT; "sentence"
    window: int = 20                   # tokens per row per batch in window mode
    batch_size: int = 128              # rows per process
    max_sentence_tokens: int = 200     # longer lines are cut into pieces (sentence mode, eval)
    streaming: bool = False            # read the corpus lazily (larger than memory)
    # Raw --train text is prepared once into OUT/corpus (pretrain.prepared) and read from there;
    # false: read and tokenized into memory at every start, as before (the same batches either way).
    prepare: bool = True
    shuffle_buffer: int = 10000        # streaming only: shuffle within a buffer of lines
    eval_max_tokens: Optional[int] = 100_000  # cap on held-out tokens per evaluation
    text_field: str = "text"           # column of a hub dataset holding the text
    # Window mode: "shuffled" rows take sentences from one seeded shuffle per epoch; "contiguous"
    # row i reads the i-th of batch_size equal slices of the corpus in corpus order, every epoch
    # (the PTB convention of Zaremba et al. 2014 and Kim et al. 2016: context crosses sentences).
    window_order: str = "shuffled"
    # Held-out evaluation: "sentence" = each sentence from the initial state; "stream" = the text
    # read in order with the state carried across sentences (pretrain.evaluate; PTB's convention).
    eval_mode: str = "sentence"

    def __post_init__(self) -> None:
        check_choice("data.tokenizer", self.tokenizer, TOKENIZERS)
        check_choice("data.batch_mode", self.batch_mode, BATCH_MODES)
        check_choice("data.window_order", self.window_order, WINDOW_ORDERS)
        check_choice("data.eval_mode", self.eval_mode, EVAL_MODES)
        check_fraction("data.heldout_fraction", self.heldout_fraction)
        check_fields_at_least("data", self, 1, "min_count", "window", "batch_size", "max_sentence_tokens",
                              "shuffle_buffer", "eval_max_tokens")
        check_fields_at_least("data", self, 4, "max_vocab_size")


@dataclass
class SoftmaxConfig:
    kind: str = "sampled"              # "sampled" (training only; full at evaluation), "full", "adaptive"
    num_samples: int = 8192            # log-uniform negatives shared by the batch
    adaptive_cutoffs: list = field(default_factory=lambda: [2000, 10000])
    adaptive_div_value: float = 4.0
    unigram_bias_init: bool = True     # start the bias at the log unigram frequencies (full/sampled)

    def __post_init__(self) -> None:
        check_choice("softmax.kind", self.kind, SOFTMAX_KINDS)
        check_fields_at_least("softmax", self, 1, "num_samples")
        check_fields_at_least("softmax", self, 1.0, "adaptive_div_value")
        if not self.adaptive_cutoffs or any(int(c) < 1 for c in self.adaptive_cutoffs) or \
                list(self.adaptive_cutoffs) != sorted(set(self.adaptive_cutoffs)):
            raise ValueError("softmax.adaptive_cutoffs must be increasing positive integers, got "
                             f"{self.adaptive_cutoffs!r}")


@dataclass
class OptimConfig:
    optimizer: str = "adagrad"
    lr: float = 0.2
    adagrad_initial_accumulator: float = 1.0
    adam_betas: list = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"         # after warm-up: constant, linear or cosine decay to min_lr_ratio
    min_lr_ratio: float = 0.0
    clip_norm: Optional[float] = 10.0  # L2 norm of all gradients together; null = off
    clip_value: Optional[float] = None  # clamp every gradient entry to +-clip_value; null = off
    dropout: float = 0.1
    # "row": token losses summed over time, averaged over rows (bilm-tf's loss * unroll_steps: with
    # Adagrad's initial accumulator the gradient scale matters); "token": the mean token loss.
    loss_normalization: str = "row"
    # schedule "plateau" (Kim et al. 2016): after each held-out evaluation at the end of an epoch,
    # the rate is multiplied by plateau_factor when the forward perplexity improved by less than
    # plateau_threshold over the previous epoch's.
    plateau_threshold: float = 1.0
    plateau_factor: float = 0.5
    init_range: Optional[float] = None  # every weight ~ U(-r, r) (Kim et al.: 0.05); null = per module
    # The LSTM projection W_p held at the identity (dim == projection_dim, no clipping): a plain
    # LSTM without projection, as Kim et al.'s; only the "lstm" cell.
    identity_projection: bool = False
    # Dropout also on the first LSTM layer's input (the token vectors), as ELMo; false: between
    # the layers and before the softmax only, as Kim et al.
    input_dropout: bool = True

    def __post_init__(self) -> None:
        check_choice("optim.optimizer", self.optimizer, OPTIMIZERS)
        check_choice("optim.schedule", self.schedule, SCHEDULES)
        check_choice("optim.loss_normalization", self.loss_normalization, ("row", "token"))
        check_fields_at_least("optim", self, 0, "lr", "adagrad_initial_accumulator", "weight_decay",
                              "warmup_steps", "min_lr_ratio", "clip_norm", "clip_value", "plateau_threshold",
                              "init_range")
        if not 0.0 < self.plateau_factor <= 1.0:
            raise ValueError(f"optim.plateau_factor must be in (0, 1], got {self.plateau_factor}")
        check_fraction("optim.dropout", self.dropout)
        if len(self.adam_betas) != 2:
            raise ValueError(f"optim.adam_betas must be [beta1, beta2], got {self.adam_betas!r}")


@dataclass
class TrainConfig:
    max_tokens: Optional[int] = None   # budget: exactly one of max_tokens / max_steps / epochs
    max_steps: Optional[int] = None
    epochs: Optional[float] = None
    seed: int = 0
    device: str = "auto"               # "auto" = cuda when available, else cpu
    precision: str = "fp32"            # bf16 / fp16 autocast (fp16 with a loss scaler)
    threads: Optional[int] = None      # torch CPU threads; null = torch's default
    log_every: int = 10                # steps between metrics lines
    eval_every: Optional[int] = None   # steps between held-out evaluations; null = 5 per run
    eval_at_start: bool = True         # also before the first step (the curve's starting point)
    checkpoint_every: Optional[int] = None  # steps; null = about 10 per run
    keep_checkpoints: int = 3
    dedup_tokens: bool = True          # run the char CNN once per distinct token of a batch
    compile: bool = False              # the model's forward/backward through torch.compile
    progress: bool = True
    eval_per_epoch: bool = False       # also evaluate (and checkpoint) at the end of every epoch
    directions: str = "both"           # "forward": train (and evaluate) only the forward LM

    def __post_init__(self) -> None:
        check_choice("train.precision", self.precision, PRECISIONS)
        check_choice("train.directions", self.directions, DIRECTIONS)
        check_fields_at_least("train", self, 1, "max_tokens", "max_steps", "threads", "log_every",
                              "eval_every", "checkpoint_every", "keep_checkpoints")
        if self.epochs is not None and (isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, float))
                                        or self.epochs <= 0):
            raise ValueError(f"train.epochs must be a number > 0, got {self.epochs!r} (as train.max_steps "
                             "and train.max_tokens: a budget of 0 trains nothing)")

    def budget(self) -> tuple[str, float]:
        """The one training budget that is set, as (kind, amount)."""
        given = [(k, v) for k, v in (("max_tokens", self.max_tokens), ("max_steps", self.max_steps),
                                     ("epochs", self.epochs)) if v is not None]
        if len(given) != 1:
            raise ValueError("set exactly one training budget: --max-tokens, --max-steps or --epochs "
                             f"(got {', '.join(k for k, _ in given) or 'none'})")
        return given[0]


@dataclass
class PretrainConfig(JsonConfig):
    model: ElmoConfig = field(default_factory=lambda: preset("tiny"))
    data: DataConfig = field(default_factory=DataConfig)
    softmax: SoftmaxConfig = field(default_factory=SoftmaxConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def check(self) -> None:
        """Rules across sections (checked once the whole config is known, before a run)."""
        if self.optim.identity_projection:
            b = self.model.bilm
            if b.cell != "lstm" or b.dim != b.projection_dim or b.proj_clip is not None:
                raise ValueError("optim.identity_projection needs model.bilm.cell 'lstm', dim == "
                                 f"projection_dim and proj_clip null; got cell {b.cell!r}, dim {b.dim}, "
                                 f"projection_dim {b.projection_dim}, proj_clip {b.proj_clip}")
        if self.optim.schedule == "plateau" and not self.train.eval_per_epoch:
            raise ValueError("optim.schedule 'plateau' is driven by the evaluation at the end of each "
                             "epoch: set train.eval_per_epoch=true (and give held-out text)")
        if self.data.window_order == "contiguous" and self.data.streaming:
            raise ValueError("data.window_order 'contiguous' reads the corpus in memory; it cannot be "
                             "combined with data.streaming")


# Training settings per size on top of the model preset. ``tiny`` is sized for two CPU cores and
# minutes: Adam learns much faster than the original's Adagrad in a few hundred steps (BBC News,
# 300 steps of 64 x 20 tokens: held-out perplexity 369 with Adam 0.004, 580 with Adagrad 0.2;
# unigram 939), and 2048 negatives match the full softmax there at 40% of its step time.
TRAIN_PRESETS = {
    "tiny": {"data": {"batch_size": 64, "max_vocab_size": 20000},
             "softmax": {"num_samples": 2048},
             "optim": {"optimizer": "adam", "lr": 0.004}},
    "small": {},
    "medium": {},
    "original": {},
}


def _kim_model(filters: list, n_highway: int, dim: int) -> ElmoConfig:
    """Kim et al. 2016, Table 2 (PTB): char embeddings 15, one tanh convolution per width, highway
    layers (relu), the highway output read by 2 LSTM layers of ``dim`` units (no character
    projection, no LSTM projection, clipping or residual connections)."""
    return ElmoConfig(CharCNNConfig(embedding_dim=15, filters=filters, n_highway=n_highway,
                                    activation="tanh", projection=False),
                      BiLMConfig(dim=dim, projection_dim=dim, n_layers=2, cell_clip=None,
                                 proj_clip=None, use_skip_connections=False))


# Kim et al. 2016's training recipe for PTB (sec. 4 "Optimization"): window mode with BPTT 35 and
# batch 20 over the text in order, plain SGD at lr 1.0, halved when validation perplexity improves
# by less than 1 after an epoch, 25 epochs, gradient norm 5, dropout 0.5 between the LSTM layers
# and before the softmax (not on the highway output), every weight and bias U(-0.05, 0.05), a
# full softmax over the 10k words; the forward LM only (the paper's models are forward LMs).
_KIM_TRAINING = {
    "data": {"batch_size": 20, "window": 35, "batch_mode": "window", "window_order": "contiguous",
             "eval_mode": "stream", "eval_max_tokens": None, "max_vocab_size": None},
    "softmax": {"kind": "full", "unigram_bias_init": False},
    "optim": {"optimizer": "sgd", "lr": 1.0, "schedule": "plateau", "plateau_threshold": 1.0,
              "plateau_factor": 0.5, "clip_norm": 5.0, "dropout": 0.5, "init_range": 0.05,
              "identity_projection": True, "input_dropout": False, "loss_normalization": "row"},
    "train": {"epochs": 25, "eval_per_epoch": True, "directions": "forward"},
}
PTB_PRESETS = {
    # LSTM-Char-Small: widths 1-6 with 25 x width filters (525), 1 highway layer, 2 x 300.
    "ptb-char-small": lambda: _kim_model([[w, 25 * w] for w in range(1, 7)], 1, 300),
    # LSTM-Char-Large: widths 1-7 with min(200, 50 x width) filters (1100), 2 highway layers, 2 x 650.
    "ptb-char-large": lambda: _kim_model([[w, min(200, 50 * w)] for w in range(1, 8)], 2, 650),
}
PRETRAIN_PRESETS = tuple(PRESETS) + tuple(PTB_PRESETS)


def pretrain_preset(name: str) -> PretrainConfig:
    """The model preset ``name`` (elmo.config.preset) with its training settings; or one of
    ``PTB_PRESETS`` (Kim et al. 2016's models with their recipe)."""
    if name in PTB_PRESETS:
        config = PretrainConfig(model=PTB_PRESETS[name]()).to_dict()
        for section, values in _KIM_TRAINING.items():
            config[section].update(values)
        config["train"]["max_tokens"] = config["train"]["max_steps"] = None
        return PretrainConfig.from_dict(config)
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRETRAIN_PRESETS)}")
    config = PretrainConfig(model=preset(name)).to_dict()
    for section, values in TRAIN_PRESETS.get(name, {}).items():
        config[section].update(values)
    return PretrainConfig.from_dict(config)



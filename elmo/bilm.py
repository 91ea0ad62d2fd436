"""The bidirectional recurrent stack of ELMo (Peters et al. 2018, sec. 3.1 and 3.4).

Two independent stacks of ``n_layers`` recurrent layers read the sentence left-to-right and
right-to-left: projected LSTMs in the original, or any cell of ``elmo.cells`` (``BiLMConfig.cell``).
With ``use_skip_connections`` the output of every layer above the first is its recurrent output
plus its input (a residual connection, as the original's ``ResidualWrapper``); with
``input_skip_connections`` the token layer is added to every layer's input above the first. Each
layer's ELMo representation is [forward_k; backward_k].

The backward stack runs on each row reversed within its own length, so it is the same packed
left-to-right loop as the forward stack, and rows never see their padding. A layer pair of the
plain original cell runs both directions in one fused loop (``elmo.kernels``, its GEMM library
chosen once per ``BiLM``); every other cell runs its own ``forward`` (the packed loop of
``elmo.cells.base``). ``directions="forward"`` (or ``"backward"``) runs one stack alone, for a
forward language model (Kim et al. 2016): half the work, the other stack untouched. State is per
row and per (layer, direction):
``BiLMState = [(fwd_state, bwd_state) for each layer]`` where a layer's state is a tuple of
(B, size) tensors; for the LSTM it is (h (B, P), c (B, H)).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from elmo.cells import make_layer
from elmo.config import BiLMConfig
from elmo.kernels import LstmKernels
from elmo.lstm import batch_sizes_from_lengths

BiLMState = list  # list[tuple[tuple[Tensor, ...], tuple[Tensor, ...]]]: (fwd, bwd) per layer
DIRECTIONS = {"both": (0, 1), "forward": (0,), "backward": (1,)}  # the stacks each choice runs


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor, time_dim: int = 0) -> torch.Tensor:
    """Reverse each row of x within its own length: x is (T, B, D) with ``time_dim=0`` (time-major)
    or (B, T, D) with ``time_dim=1``.

    Positions past a row's length stay where they are; applying it twice is the identity.
    A contiguous x is reordered as whole D-vectors (``index_select``, whose backward adds whole
    rows too), which trains faster than an element-wise ``gather`` (figures: docs/benchmarks.md).
    """
    if time_dim not in (0, 1):
        raise ValueError(f"time_dim must be 0 or 1, got {time_dim}")
    T, B = (x.shape[0], x.shape[1]) if time_dim == 0 else (x.shape[1], x.shape[0])
    t = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
    lengths = lengths.to(x.device).unsqueeze(0)  # (1, B)
    index = torch.where(t < lengths, lengths - 1 - t, t)  # (T, B): the source step of each step
    if not x.is_contiguous():
        index = index if time_dim == 0 else index.t()
        return x.gather(time_dim, index.unsqueeze(-1).expand_as(x))
    b = torch.arange(B, device=x.device)
    rows = index * B + b if time_dim == 0 else index.t() + (b * T).unsqueeze(1)  # flat row ids
    return x.reshape(T * B, *x.shape[2:]).index_select(0, rows.reshape(-1)).view(x.shape)


class BiLM(nn.Module):
    """The two stacks. ``gemm`` picks the library of the LSTM's per-step products once
    (``elmo.kernels``: auto, onednn, mkl or plain; None = ``ELMO_GEMM`` or auto)."""

    def __init__(self, config: BiLMConfig, gemm: Optional[str] = None,
                 input_dim: Optional[int] = None) -> None:
        super().__init__()
        self.config = config
        # Not a submodule and not saved: how this process runs the LSTM, and the weights it
        # prepared for inference (dropped on train()/eval() and when a state dict is loaded).
        self.kernels = LstmKernels(gemm)
        self.register_load_state_dict_post_hook(_release_prepared_weights)
        P = config.projection_dim

        first = P if input_dim is None else input_dim  # the token vectors' size (default P)

        def make() -> nn.ModuleList:
            # config.cell picks the layer class (elmo.cells.make_layer: elmo.lstm.Lstm for "lstm").
            return nn.ModuleList(make_layer(config, first if k == 0 else P) for k in range(config.n_layers))

        self.forward_layers, self.backward_layers = make(), make()

    def set_gemm(self, gemm: str) -> None:
        """Run the LSTM's per-step products with ``gemm`` from now on (auto, onednn, mkl, plain)."""
        self.kernels = LstmKernels(gemm)

    def train(self, mode: bool = True) -> "BiLM":
        self.kernels.release()  # the weights may change in training; eval() starts afresh
        return super().train(mode)

    def default_state(self, batch: int) -> BiLMState:
        """Every layer's stored initial state (zeros unless a warm state was set), ``batch`` rows."""
        return [(f.initial_state(batch), b.initial_state(batch))
                for f, b in zip(self.forward_layers, self.backward_layers)]

    def set_initial_state(self, state: BiLMState, row: int = 0) -> None:
        """Make row ``row`` of ``state`` the initial state of every future row."""
        for (f, b), pair in zip(zip(self.forward_layers, self.backward_layers), state):
            for layer, st in zip((f, b), pair):
                layer.set_initial_state(tuple(x[row] for x in st))

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor, state: Optional[BiLMState] = None,
                dropout: float = 0.0, lengths: Optional[Sequence[int]] = None,
                directions: str = "both", input_dropout: bool = True
                ) -> tuple[list[torch.Tensor], BiLMState]:
        """inputs (B, T, P), mask (B, T) with each row's real positions first.

        Returns ``n_layers`` tensors (B, T, 2P) (zero at padding; float32) and the final state of
        every row, in the rows' input order. ``dropout`` applies to each layer's input in training;
        ``input_dropout=False`` leaves the first layer's input (the token vectors) undropped (Kim
        et al. 2016: dropout between the layers only). ``lengths``, the B ints of ``mask.sum(-1)``
        when the caller knows them, saves reading them back from the device (the loop needs them
        on the host): a GPU step then never waits.

        ``directions`` "forward" or "backward" runs that stack alone: the layers are (B, T, P),
        that direction's half of the "both" layers, and the other stack's state is returned as it
        was given (its initial state when ``state`` is None); the other stack does no work.
        """
        runs = DIRECTIONS.get(directions)
        if runs is None:
            raise ValueError(f"directions must be one of {', '.join(DIRECTIONS)}, got {directions!r}")
        B, T, P = inputs.shape
        # In a graph being exported (elmo.onnx_export) no length reaches the host: every row runs
        # all T steps in its input order (the layers' forward_dense) and its padding is masked.
        dense = torch.compiler.is_exporting()
        if dense:
            order, lengths_sorted, batch_sizes = torch.arange(B, device=inputs.device), mask.long().sum(-1), []
        elif lengths is None:
            lengths_sorted, order = torch.sort(mask.long().sum(-1), descending=True, stable=True)
            batch_sizes = batch_sizes_from_lengths(lengths_sorted.tolist())
        elif len(set(lengths)) <= 1:  # every row as long (window mode): nothing to reorder or copy
            batch_sizes = batch_sizes_from_lengths(list(lengths))
            order = torch.arange(B, device=inputs.device)
            lengths_sorted = torch.full((B,), lengths[0] if B else 0, dtype=torch.long, device=inputs.device)
        else:
            host_order = sorted(range(B), key=lambda i: -lengths[i])  # stable, as torch.sort
            batch_sizes = batch_sizes_from_lengths([lengths[i] for i in host_order])
            order = torch.tensor(host_order, dtype=torch.long).to(inputs.device, non_blocking=True)
            lengths_sorted = torch.tensor([lengths[i] for i in host_order]).to(inputs.device, non_blocking=True)
        unsort = torch.empty_like(order)
        unsort[order] = torch.arange(B, device=order.device)
        if not dense and len(batch_sizes) < T:  # trailing all-padding positions
            batch_sizes += [0] * (T - len(batch_sizes))
        if state is None:
            state = self.default_state(B)

        x = inputs.index_select(0, order).transpose(0, 1)  # (T, B, P), time-major, sorted
        # Per running direction (forward: 0, backward: 1): its input, each row in reading order.
        xs = [x if d == 0 else reverse_padded(x, lengths_sorted) for d in runs]
        tokens = xs
        stacks = (self.forward_layers, self.backward_layers)
        layers, final = [], []
        for k in range(self.config.n_layers):
            group = [stacks[d][k] for d in runs]
            x_ins = xs
            if dropout > 0 and self.training and (k > 0 or input_dropout):
                x_ins = [nn.functional.dropout(x_in, dropout, training=True) for x_in in x_ins]
            states = [tuple(x.index_select(0, order) for x in state[k][d]) for d in runs]
            if dense:
                results = [layer.forward_dense(x_in, st) for layer, x_in, st in zip(group, x_ins, states)]
            elif self.kernels.fuses(group):
                # The plain original cell: the directions in one fused loop (elmo.kernels).
                results = self.kernels.run(group, x_ins, batch_sizes, states)
            else:  # every other cell: its own forward, the packed loop of elmo.cells.base
                results = [layer(x_in, batch_sizes, st)
                           for layer, x_in, st in zip(group, x_ins, states)]  # (T, B, P)
            outs, pair = [], list(state[k])  # a stack that does not run keeps its state
            for d, x_in, (out, last) in zip(runs, x_ins, results):
                if self.config.use_skip_connections and k > 0:
                    out = out + x_in  # residual (on the dropped-out input, as the original)
                outs.append(out)
                pair[d] = tuple(x.index_select(0, unsort) for x in last)
            xs = outs
            halves = [out if d == 0 else reverse_padded(out, lengths_sorted) for d, out in zip(runs, outs)]
            both = torch.cat(halves, dim=-1) if len(halves) > 1 else halves[0]  # (T, B, 2P) or (T, B, P)
            layer_out = both.transpose(0, 1).index_select(0, unsort)  # (B, T, 2P)
            layers.append(layer_out * mask.unsqueeze(-1).to(layer_out.dtype))
            final.append(tuple(pair))
            if self.config.input_skip_connections:  # the token layer also feeds every layer above
                xs = [x + t for x, t in zip(xs, tokens)]
        return layers, final


def _release_prepared_weights(bilm: BiLM, _incompatible_keys) -> None:
    bilm.kernels.release()  # load_state_dict copied new weights in place


def detach_state(state: BiLMState) -> BiLMState:
    """The same state cut from the autograd graph (for truncated back-propagation)."""
    return [tuple(tuple(x.detach() for x in st) for st in pair) for pair in state]


def map_state(fn, *states: BiLMState) -> BiLMState:
    """Apply ``fn`` to corresponding tensors of one or more states (same structure)."""
    return [tuple(tuple(fn(*xs) for xs in zip(*sts)) for sts in zip(*pairs)) for pairs in zip(*states)]

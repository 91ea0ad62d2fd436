"""One direction of the biLM on its own: forward-only training, and the state-carrying evaluation.

Kim et al. 2016 and Zaremba et al. 2014 train and report forward language models. ``ForwardLM``
is ``BidirectionalLM`` with the backward stack left out of the computation (half the recurrent
work; its parameters stay in the model, untrained, so the run directory is still an ELMo model
directory). ``run_direction`` runs the character-level token vectors through one stack of the
biLM exactly as ``elmo.bilm.BiLM.forward`` runs that stack (dropout on each layer's input,
residual and input skip connections), so that the two agree to float rounding (tested).

The training recipe's other pieces live here too: ``Plateau`` (the learning rate halved when
held-out perplexity stops improving by a margin, Kim et al. sec. 4), the uniform initialisation
of every weight, and the LSTM projection held at the identity (a plain LSTM).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from elmo.bilm import BiLMState, reverse_padded
from elmo.char_cnn import Highway
from elmo.lstm import FORGET_BIAS, Lstm, batch_sizes_from_lengths
from elmo.model import ElmoBiLM
from pretrain.batches import Batch
from pretrain.lm import BidirectionalLM, LMOutput

FORWARD, BACKWARD = 0, 1
HIGHWAY_GATE_BIAS = -2.0  # Kim et al. 2016's constant on the highway gate (model/HighwayMLP.lua)


def run_direction(bilm: ElmoBiLM, direction: int, tokens: torch.Tensor, mask: torch.Tensor,
                  state: Optional[list] = None, dropout: float = 0.0, reverse: bool = False,
                  input_dropout: bool = True) -> tuple[torch.Tensor, list]:
    """tokens (B, T, P) (zero at padding), mask (B, T) with each row's real positions first ->
    the top layer of one direction's stack (B, T, P) and its final state per layer.

    ``direction`` picks the forward (0) or the backward (1) layers; ``reverse`` reads each row
    right to left within its length (what the biLM does for the backward stack; a caller that has
    already reversed its text passes False). ``state``: one tuple per layer, rows in batch order,
    or None for the layers' initial state. ``input_dropout=False`` leaves the first layer's
    input (the token vectors) undropped, as Kim et al. 2016 (dropout between the layers only).
    """
    stack = bilm.bilm.forward_layers if direction == FORWARD else bilm.bilm.backward_layers
    config = bilm.bilm.config
    B, T, _ = tokens.shape
    lengths = mask.long().sum(-1)  # (B,)
    lengths_sorted, order = torch.sort(lengths, descending=True, stable=True)
    unsort = torch.empty_like(order)
    unsort[order] = torch.arange(B, device=order.device)
    batch_sizes = batch_sizes_from_lengths(lengths_sorted.tolist())
    batch_sizes += [0] * (T - len(batch_sizes))
    if state is None:
        state = [layer.initial_state(B) for layer in stack]
    x = tokens.index_select(0, order).transpose(0, 1)  # (T, B, P), time-major, sorted
    if reverse:
        x = reverse_padded(x, lengths_sorted)
    first = x
    finals = []
    for k, layer in enumerate(stack):
        drop = dropout > 0 and bilm.training and (k > 0 or input_dropout)
        x_in = nn.functional.dropout(x, dropout, training=True) if drop else x
        st = tuple(s.index_select(0, order) for s in state[k])
        out, last = layer(x_in, batch_sizes, st)  # (T, B, P)
        if config.use_skip_connections and k > 0:
            out = out + x_in
        finals.append(tuple(s.index_select(0, unsort) for s in last))
        x = out + first if config.input_skip_connections else out
    top = reverse_padded(out, lengths_sorted) if reverse else out
    top = top.transpose(0, 1).index_select(0, unsort)  # (B, T, P)
    return top * mask.unsqueeze(-1).to(top.dtype), finals


def token_vectors(bilm: ElmoBiLM, batch: Batch) -> torch.Tensor:
    """The character encoder once per distinct token of the batch, gathered into place (B, T, P)."""
    vectors = bilm.char_cnn.encode_tokens(batch.token_chars)  # (U, P)
    tokens = vectors[batch.tokens.clamp(min=0)]  # (B, T, P)
    return tokens * batch.mask.unsqueeze(-1).to(tokens.dtype)


class ForwardLM(BidirectionalLM):
    """The forward LM alone: the backward losses are zero with zero targets, and the backward
    part of the carried state is passed through unchanged (its initial state).
    ``input_dropout`` False: no dropout on the first layer's input (``optim.input_dropout``)."""

    input_dropout = True

    def forward(self, batch: Batch, state: Optional[BiLMState] = None, dropout: float = 0.0,
                generator: Optional[torch.Generator] = None, full_rows: bool = False) -> LMOutput:
        """As ``BidirectionalLM.forward`` (``full_rows`` is accepted for its interface: rows are
        packed by length here either way)."""
        B = batch.tokens.shape[0]
        if state is None:
            state = self.bilm.bilm.default_state(B)
        top, final = run_direction(self.bilm, FORWARD, token_vectors(self.bilm, batch), batch.mask,
                                   [pair[0] for pair in state], dropout,
                                   input_dropout=self.input_dropout)
        if dropout > 0 and self.training:
            top = nn.functional.dropout(top, dropout, training=True)
        fsel = batch.forward_targets >= 0  # (B, T)
        if self.softmax.kind == "adaptive":
            losses = self.softmax(top[fsel], batch.forward_targets[fsel], generator)  # (Nf,)
        else:  # every position, those without a target masked out: nothing read from the device
            P = top.shape[-1]
            targets = batch.forward_targets.reshape(-1)
            losses = self.softmax(top.reshape(-1, P), targets.clamp(min=0), generator)  # (BT,)
            losses = torch.where(targets >= 0, losses, losses.new_zeros(()))
        zero = losses.new_zeros(())
        new_state = [(f, pair[1]) for f, pair in zip(final, state)]
        return LMOutput(losses.sum(), zero, fsel.sum(), torch.zeros_like(fsel.sum()), new_state)


class Plateau:
    """Multiply the learning rate by ``factor`` when a held-out perplexity improves by less than
    ``threshold`` over the previous one (Kim et al. 2016: halve when validation perplexity does not
    drop by more than 1.0 after an epoch). The first value only sets the reference."""

    def __init__(self, threshold: float = 1.0, factor: float = 0.5) -> None:
        self.threshold, self.factor = threshold, factor
        self.scale = 1.0  # the multiplier of the base rate so far
        self.previous: Optional[float] = None
        self.history: list = []  # (perplexity, scale after it)

    def update(self, perplexity: float) -> bool:
        """Record one epoch's held-out perplexity; True when the rate was just reduced."""
        reduce = self.previous is not None and not (self.previous - perplexity >= self.threshold)
        if reduce:
            self.scale *= self.factor
        self.previous = perplexity
        self.history.append((perplexity, self.scale))
        return reduce

    def state_dict(self) -> dict:
        return {"scale": self.scale, "previous": self.previous, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.previous = float(state["scale"]), state["previous"]
        self.history = [tuple(h) for h in state.get("history", [])]


@torch.no_grad()
def init_uniform(model: nn.Module, init_range: float) -> None:
    """Every parameter ~ U(-r, r) (Kim et al. 2016: r = 0.05); embedding padding rows stay zero.

    The LSTM cells add a constant 1.0 to the forget gate at run time (the original ELMo's
    ``FORGET_BIAS``); its stored bias is shifted by -1.0 here so that the bias the gate sees is
    ~ U(-r, r) as well, as in Kim et al.'s LSTM, which has no such constant. Kim et al.'s highway
    layers add a constant -2 to their gate (the gate starts mostly closed: the input is carried);
    here that constant goes into the gate's stored bias, ~ U(-r, r) - 2."""
    for p in model.parameters():
        p.uniform_(-init_range, init_range)
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()
        if isinstance(module, Highway):  # each Linear(d, 2d): [transform; gate]
            for layer in module.layers:
                layer.bias[layer.out_features // 2 :] += HIGHWAY_GATE_BIAS
        if isinstance(module, Lstm):  # also peephole, CIFG: their own forget block
            H, k = module.hidden_dim, module.forget_block
            module.input_bias[k * H : (k + 1) * H] -= FORGET_BIAS


@torch.no_grad()
def fix_identity_projection(bilm: ElmoBiLM) -> int:
    """Set every LSTM layer's projection W_p to the identity and freeze it (a plain LSTM:
    h_t = o_t * tanh(c_t)); returns the number of frozen parameters."""
    frozen = 0
    for layer in list(bilm.bilm.forward_layers) + list(bilm.bilm.backward_layers):
        w = getattr(layer, "projection_weight", None)
        if w is None or w.shape[0] != w.shape[1]:
            raise ValueError(f"identity_projection needs square LSTM projections; {type(layer).__name__} "
                             f"has {None if w is None else tuple(w.shape)}")
        w.copy_(torch.eye(w.shape[0], dtype=w.dtype, device=w.device))
        w.requires_grad_(False)
        frozen += w.numel()
    return frozen


def count_parameters(model: nn.Module, directions: str = "both") -> int:
    """Trainable parameters that take part in the given directions' computation."""
    skip = set()
    if directions == "forward":
        skip = {id(p) for p in model.bilm.bilm.backward_layers.parameters()}
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in skip)


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")

"""Kim et al. 2016's training recipe, the pieces the trainer does not have otherwise.

``Plateau``: the learning rate halved when held-out perplexity stops improving by a margin (Kim et
al. sec. 4). ``init_uniform``: every weight drawn from U(-r, r). ``fix_identity_projection``: the
LSTM projection held at the identity (a plain LSTM). ``count_parameters``: what the paper's
parameter counts count. Forward-only training (``train.directions`` "forward", the paper's forward
LM) is ``BidirectionalLM`` called with ``directions="forward"``: the backward stack does no work,
its parameters stay in the model, untrained, so the run directory is still an ELMo model directory.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from elmo.char_cnn import Highway
from elmo.lstm import FORGET_BIAS, Lstm
from elmo.model import ElmoBiLM

HIGHWAY_GATE_BIAS = -2.0  # Kim et al. 2016's constant on the highway gate (model/HighwayMLP.lua)


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
        layer.projection_is_identity = True  # the recurrence skips the product
        frozen += w.numel()
    return frozen


def apply_recipe(lm: nn.Module, optim, initialise: bool = True) -> None:
    """What ``optim`` (an ``OptimConfig``) asks of a freshly built LM: every parameter ~ U(-r, r)
    (``init_range``; skipped when ``initialise`` is False, e.g. for weights loaded from a model)
    and the LSTM projections frozen at the identity (``identity_projection``)."""
    if initialise and optim.init_range is not None:
        init_uniform(lm, optim.init_range)
    if optim.identity_projection:
        fix_identity_projection(lm.bilm)


def count_parameters(model: nn.Module, directions: str = "both") -> int:
    """Trainable parameters that take part in the given directions' computation."""
    unused = {"both": (), "forward": (model.bilm.bilm.backward_layers,),
              "backward": (model.bilm.bilm.forward_layers,)}[directions]
    skip = {id(p) for stack in unused for p in stack.parameters()}
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in skip)


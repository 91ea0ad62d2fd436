"""Task-specific weighting of the ELMo layers (Peters et al. 2018, eq. 1):

    ELMo_task = gamma * sum_k softmax(s)_k * h_k

with optional layer normalisation of each h_k over the real (unmasked) positions of each
sentence before mixing. The original normalised over the whole batch; normalising per sentence
keeps a sentence's representation independent of the batch it is in. The softmax and the sum
run in float32 whatever the layers' dtype.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn


class ScalarMix(nn.Module):
    def __init__(self, num_layers: int, do_layer_norm: bool = False,
                 initial_weights: Optional[Sequence[float]] = None, trainable: bool = True,
                 eps: float = 1e-12) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"ScalarMix needs num_layers >= 1, got {num_layers}")
        if initial_weights is None:
            initial_weights = [0.0] * num_layers
        if len(initial_weights) != num_layers:
            raise ValueError(f"initial_weights has {len(initial_weights)} values for {num_layers} layers")
        self.num_layers, self.do_layer_norm, self.eps = num_layers, do_layer_norm, eps
        self.scalar_parameters = nn.Parameter(torch.tensor([float(w) for w in initial_weights]),
                                              requires_grad=trainable)
        self.gamma = nn.Parameter(torch.tensor(1.0), requires_grad=trainable)

    def weights(self) -> torch.Tensor:
        """The normalised layer weights softmax(s), at least float32 (num_layers,)."""
        s = self.scalar_parameters
        return torch.softmax(s.to(torch.promote_types(s.dtype, torch.float32)), dim=0)

    def forward(self, layers: Sequence[torch.Tensor] | torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """layers: ``num_layers`` tensors (B, T, D), or one (num_layers, B, T, D) tensor; mask (B, T).

        Returns (B, T, D) in float32 (float64 when the layers are float64)."""
        if len(layers) != self.num_layers:
            raise ValueError(f"ScalarMix was built for {self.num_layers} layers, got {len(layers)}")
        if self.do_layer_norm and mask is None:
            raise ValueError("ScalarMix(do_layer_norm=True) needs the mask")
        out_dtype = torch.promote_types(layers[0].dtype, torch.float32)
        w = self.weights().to(out_dtype)
        if self.do_layer_norm:
            layers = [self._layer_norm(layer.to(out_dtype), mask) for layer in layers]
        return self.gamma.to(out_dtype) * weighted_sum(layers, w)

    def _layer_norm(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
        n = (m.sum(dim=(1, 2)) * x.shape[-1]).clamp(min=1.0)  # (B,) real values per sentence
        mean = (x * m).sum(dim=(1, 2)) / n  # (B,)
        var = (((x - mean[:, None, None]) * m) ** 2).sum(dim=(1, 2)) / n
        return (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + self.eps)


def weighted_sum(layers: Sequence[torch.Tensor] | torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_k weights[k] * layers[k]`` in at least float32: the one mixing loop (``ScalarMix``,
    and the featurizer's fixed layer weights). layers: K tensors (...) or one (K, ...) tensor."""
    if len(layers) != len(weights):
        raise ValueError(f"{len(weights)} layer weights for {len(layers)} layers")
    out_dtype = torch.promote_types(layers[0].dtype, torch.float32)
    weights = weights.to(device=layers[0].device, dtype=out_dtype)
    total = None
    for k, layer in enumerate(layers):
        term = weights[k] * layer.to(out_dtype)
        total = term if total is None else total + term
    return total

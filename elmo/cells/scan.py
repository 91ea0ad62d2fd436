"""The element-wise linear recurrence ``c_t = f_t * c_{t-1} + u_t`` shared by SRU and QRNN.

Everything else in those cells is computed for all steps at once; this is the only sequential
part. Forward and backward are plain loops of one fused multiply-add per step, written into
preallocated (T, B, H) buffers, with a hand-written backward so that autograd does not record
T small nodes:

    dL/du_t = g_t,   where g_t = dL/dc_t (from the outputs) + f_{t+1} * g_{t+1}
    dL/df_t = g_t * c_{t-1},   dL/dc_0 = f_1 * g_1

(the backward is the same recurrence run in reverse with the gates shifted by one step).
"""

from __future__ import annotations

from typing import Sequence

import torch

from elmo.cells.regularizers import DropoutMasks


def _scan(f: torch.Tensor, u: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """c_t = f_t * c_{t-1} + u_t for t = 0..T-1; f, u (T, B, H), c0 (B, H) -> c (T, B, H)."""
    out = torch.empty_like(u)
    c = c0
    for t in range(u.shape[0]):
        c = torch.addcmul(u[t], f[t], c, out=out[t])
    return out


def _scan_backward(f: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """g_t = grad_t + f_{t+1} * g_{t+1}, run from the last step back."""
    out = torch.empty_like(grad)
    T = grad.shape[0]
    g = out[T - 1]
    g.copy_(grad[T - 1])
    for t in range(T - 2, -1, -1):
        g = torch.addcmul(grad[t], f[t + 1], g, out=out[t])
    return out


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f: torch.Tensor, u: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
        c = _scan(f, u, c0)
        ctx.save_for_backward(f, c0, c)
        return c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_c: torch.Tensor):
        f, c0, c = ctx.saved_tensors
        g = _scan_backward(f, grad_c.contiguous())  # dL/dc_t in full, (T, B, H)
        grad_f = grad_u = grad_c0 = None
        if ctx.needs_input_grad[0]:
            grad_f = g * torch.cat([c0.unsqueeze(0), c[:-1]], 0)
        if ctx.needs_input_grad[1]:
            grad_u = g
        if ctx.needs_input_grad[2]:
            grad_c0 = g[0] * f[0]
        return grad_f, grad_u, grad_c0


def linear_scan(f: torch.Tensor, u: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """All states of ``c_t = f_t * c_{t-1} + u_t``: f, u (T, B, H), c0 (B, H) -> (T, B, H).

    T must be at least 1. Differentiable in f, u and c0.
    """
    if u.shape[0] == 0:
        raise ValueError("linear_scan needs at least one time step")
    f, u = f.contiguous(), u.contiguous()
    c0 = c0.expand_as(u[0]).contiguous()
    return _LinearScan.apply(f, u, c0)


def running_mask(batch_sizes: Sequence[int], batch: int, device: torch.device) -> torch.Tensor:
    """(T, B, 1) bool: True where row b is still running at step t."""
    sizes = torch.tensor(list(batch_sizes), device=device).unsqueeze(1)  # (T, 1)
    return (torch.arange(batch, device=device).unsqueeze(0) < sizes).unsqueeze(-1)


def zoneout_scan_inputs(layer, f: torch.Tensor, u: torch.Tensor, masks: DropoutMasks
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold zoneout of c into the scan's coefficients: with keep weight w (d_t or p),
    c_t = w c_{t-1} + (1 - w)(f c_{t-1} + u) = (f + w (1 - f)) c_{t-1} + (1 - w) u."""
    if layer.recurrent_dropout_kind != "zoneout":
        return f, u
    if masks.zone is not None:
        w = masks.zone[0]
    elif not layer.training:
        w = layer.recurrent_dropout
    else:
        return f, u
    return torch.lerp(f, torch.ones_like(f), w), (1 - w) * u

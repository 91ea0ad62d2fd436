"""What every recurrent layer of the biLM shares: the layer interface, state buffers, dropout masks
and the packed time loop.

The interface (of every cell, the original LSTM ``elmo.lstm.Lstm`` included, so the biLM can
stack any of them):

    forward(inputs (T, B, in), batch_sizes: T non-increasing ints, state: tuple of (B, size) or None,
            masks: DropoutMasks or None) -> (outputs (T, B, P), final_state tuple)
    initial_state(batch) -> tuple of (batch, size)   (from the ``initial_<name>`` buffers)
    set_initial_state(tuple of 1-d tensors)

Rows are sorted by length, longest first; at step t only the ``batch_sizes[t]`` rows still running
are touched, so padding never changes a row's state and outputs are zero past each row's end.
A ``SteppedLayer`` also runs unpacked, ``forward_dense(inputs, state)``: the same step for every
row at every step, in a loop ``torch.export`` keeps (the ONNX graph of ``elmo.onnx_export``).

A ``SteppedLayer`` only has to say how one step updates the state (``step``), what the whole
sequence contributes before the loop (``precompute``: one large matmul over all steps) and how the
first state becomes the output (``readout``: identity or a projection over all steps at once).
Regularizers (see ``regularizers.py``) and the deep transition are handled here:

* the deep transition (Pascanu et al. 2014, "How to Construct Deep Recurrent Neural Networks",
  DT-RNN): the recurrent input ``r = h_{t-1}`` passes through ``transition_depth - 1`` layers
  ``r <- tanh(r W_k + b_k)`` before the cell's own update, so ``transition_depth`` non-linear
  steps separate ``h_{t-1}`` from ``h_t``;
* zoneout is applied to each zoned state after the step: ``s_t = lerp(s~_t, s_{t-1}, w)``.

Element-wise work runs in float32 (float64 for a float64 model, used by the tests); matrix
products run in the weights' dtype (e.g. bfloat16).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from elmo.cells.regularizers import KINDS, DropoutMasks, sample_masks


class RecurrentLayer(nn.Module):
    """Base of all cells: the initial-state buffers, dropout settings and mask sampling.

    Subclasses set ``state_names`` (one buffer ``initial_<name>`` per state tensor) and pass the
    state sizes, the width of the recurrent input that enters a matmul (``recurrent_dim``, None if
    there is none), the width of the candidate update (``update_dim``, None if there is no separate
    candidate: semeniuta dropout is then refused) and the number of leading states zoneout acts on.
    """

    state_names: tuple = ("h",)
    # Set on a layer by whoever fixes its square W_p at the identity and freezes it (Kim et al.'s
    # plain LSTM, pretrain.recipe.fix_identity_projection): the product is then skipped.
    projection_is_identity: bool = False

    def __init__(self, input_dim: int, hidden_dim: int, projection_dim: int, state_sizes: Sequence[int],
                 *, recurrent_dim: Optional[int], update_dim: Optional[int], n_zoned: Optional[int] = None,
                 cell_clip: Optional[float] = None, proj_clip: Optional[float] = None,
                 recurrent_dropout_kind: Optional[str] = None, recurrent_dropout: float = 0.0) -> None:
        super().__init__()
        name = type(self).__name__
        if recurrent_dropout_kind is not None and recurrent_dropout_kind not in KINDS:
            raise ValueError(f"{name}: recurrent_dropout_kind must be one of {', '.join(KINDS)} or None, "
                             f"got {recurrent_dropout_kind!r}")
        if not 0.0 <= recurrent_dropout < 1.0:
            raise ValueError(f"{name}: recurrent_dropout must be in [0, 1), got {recurrent_dropout}")
        if recurrent_dropout_kind == "semeniuta" and update_dim is None:
            raise ValueError(f"{name}: semeniuta recurrent dropout needs a separate candidate update, "
                             "which this cell does not have; use variational or zoneout")
        self.input_dim, self.hidden_dim, self.projection_dim = input_dim, hidden_dim, projection_dim
        self.recurrent_dim, self.update_dim = recurrent_dim, update_dim
        self.cell_clip, self.proj_clip = cell_clip, proj_clip
        self.recurrent_dropout_kind, self.recurrent_dropout = recurrent_dropout_kind, recurrent_dropout
        self.state_sizes = tuple(state_sizes)
        self.n_zoned = len(self.state_sizes) if n_zoned is None else n_zoned
        # The state every row starts from unless given one: zeros, or a fixed "warm" state stored
        # with the model (ElmoBiLM.set_warm_state). Saved in the state_dict.
        for state_name, size in zip(self.state_names, self.state_sizes):
            self.register_buffer(f"initial_{state_name}", torch.zeros(size))

    # -- parameters and dtypes ------------------------------------------------------------------
    # Matrices are stored (in, out), as in the original files: ``x @ W`` against a contiguous
    # right-hand side is the fast case for the skinny per-step products on CPU.
    @staticmethod
    def init_uniform(*weights: torch.Tensor) -> None:
        """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for (in, out) matrices."""
        for w in weights:
            bound = w.shape[-2] ** -0.5
            nn.init.uniform_(w, -bound, bound)

    @property
    def matmul_dtype(self) -> torch.dtype:
        return self.projection_weight.dtype

    @property
    def state_dtype(self) -> torch.dtype:
        """float32, or float64 for a float64 model (the reference tests)."""
        return torch.promote_types(self.matmul_dtype, torch.float32)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
               ) -> torch.Tensor:
        """(..., in) @ (in, out) (+ bias) as one matmul in the weight's dtype -> (..., out) in the
        state dtype."""
        flat = x.reshape(-1, x.shape[-1]).to(weight.dtype)
        y = torch.mm(flat, weight) if bias is None else torch.addmm(bias.to(weight.dtype), flat, weight)
        return y.view(*x.shape[:-1], weight.shape[1]).to(self.state_dtype)

    def clip_output(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.proj_clip is None else y.clamp(-self.proj_clip, self.proj_clip)

    def clip_cell(self, c: torch.Tensor) -> torch.Tensor:
        return c if self.cell_clip is None else c.clamp(-self.cell_clip, self.cell_clip)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., P): the output projection (no bias, so zero stays zero), clipped."""
        if self.skips_projection:
            return self.clip_output(h.to(self.state_dtype))
        return self.clip_output(self.linear(h, self.projection_weight))

    @property
    def skips_projection(self) -> bool:
        """Whether W_p is the frozen identity (``projection_is_identity`` and no gradient)."""
        return self.projection_is_identity and not self.projection_weight.requires_grad

    # -- state ------------------------------------------------------------------------------------
    def initial_state(self, batch: int) -> tuple:
        """The stored initial state, broadcast to ``batch`` rows."""
        return tuple(getattr(self, f"initial_{n}").to(self.state_dtype).expand(batch, -1)
                     for n in self.state_names)

    @torch.no_grad()
    def set_initial_state(self, state: Sequence[torch.Tensor]) -> None:
        """Store one row's state (a tuple of 1-d tensors) as the initial state of every row."""
        if len(state) != len(self.state_names):
            raise ValueError(f"{type(self).__name__}: a state has {len(self.state_names)} tensors "
                             f"{self.state_names}, got {len(state)}")
        for n, s in zip(self.state_names, state):
            getattr(self, f"initial_{n}").copy_(s.reshape(-1))

    def _start(self, inputs: torch.Tensor, batch_sizes: Optional[Sequence[int]], state: Optional[tuple]
               ) -> tuple:
        T, B = inputs.shape[:2]
        if batch_sizes is not None and len(batch_sizes) != T:  # (None: every row runs all T steps)
            raise ValueError(f"{type(self).__name__}: batch_sizes has {len(batch_sizes)} entries for "
                             f"{T} time steps")
        if inputs.shape[-1] != self.input_dim:
            raise ValueError(f"{type(self).__name__}: inputs must be (T, B, {self.input_dim}), "
                             f"got {tuple(inputs.shape)}")
        if state is None:
            return self.initial_state(B)
        return tuple(s.to(self.state_dtype) for s in state)

    # -- regularizers -----------------------------------------------------------------------------
    def sample_masks(self, steps: int, batch: int, like: Optional[torch.Tensor] = None) -> DropoutMasks:
        """The masks a training forward call over (steps, batch) would draw."""
        like = self.initial_state(1)[0] if like is None else like
        return sample_masks(self.recurrent_dropout_kind, self.recurrent_dropout, steps, batch,
                            input_dim=self.input_dim, output_dim=self.projection_dim,
                            recurrent_dim=self.recurrent_dim, update_dim=self.update_dim,
                            zoned_dims=self.state_sizes[: self.n_zoned], like=like.to(self.state_dtype))

    def _masks(self, steps: int, batch: int, masks: Optional[DropoutMasks], like: torch.Tensor
               ) -> DropoutMasks:
        """Masks are used in training only; in evaluation nothing random happens."""
        if not self.training or self.recurrent_dropout_kind is None:
            return DropoutMasks()
        return self.sample_masks(steps, batch, like) if masks is None else masks

    def zoneout(self, k: int, new: torch.Tensor, old: torch.Tensor, masks: DropoutMasks, t: int,
                n: int) -> torch.Tensor:
        """State ``k`` after zoneout at step ``t`` (rows ``:n``): lerp(new, old, d_t) in training,
        lerp(new, old, p) in evaluation."""
        if k >= self.n_zoned:
            return new
        if masks.zone is not None:
            return torch.lerp(new, old, masks.zone[k][t, :n])
        if self.training:  # training with masks switched off (rate 0 or kind None)
            return new
        return torch.lerp(new, old, self.recurrent_dropout)  # evaluation: the expectation


class SteppedLayer(RecurrentLayer):
    """A cell whose state update needs a matrix product per step, run by one packed time loop.

    Subclasses implement ``precompute`` (T, B, in) -> (T, B, G), ``step`` and ``readout``; the
    first state tensor is the one ``readout`` turns into the output.
    """

    def __init__(self, *args, transition_depth: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if transition_depth < 1:
            raise ValueError(f"{type(self).__name__}: transition_depth must be >= 1, got {transition_depth}")
        R = self.recurrent_dim
        self.transition_weights = nn.ParameterList(torch.empty(R, R) for _ in range(transition_depth - 1))
        self.transition_biases = nn.ParameterList(torch.empty(R) for _ in range(transition_depth - 1))

    def reset_transition(self) -> None:
        self.init_uniform(*self.transition_weights)
        for b in self.transition_biases:
            nn.init.zeros_(b)

    def recurrent_input(self, r: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The previous state as it enters the recurrent matmul: dropped out (variational), then
        through the deep-transition layers."""
        if mask is not None:
            r = r * mask
        for w, b in zip(self.transition_weights, self.transition_biases):
            r = torch.tanh(self.addmm(b.to(self.state_dtype), r, w))
        return r

    @staticmethod
    def addmm(bias: torch.Tensor, x: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
        """bias + x @ w_t, with the product in the weight's dtype and the sum in the bias's."""
        if w_t.dtype == bias.dtype:
            return torch.addmm(bias, x, w_t)
        return bias + torch.mm(x.to(w_t.dtype), w_t).to(bias.dtype)

    # -- to implement -----------------------------------------------------------------------------
    def precompute(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step(self, xp: torch.Tensor, state: tuple, state_mask: Optional[torch.Tensor],
             update_mask: Optional[torch.Tensor]) -> tuple:
        """One step for the n running rows: xp (n, G), state tuple of (n, size) -> new state."""
        raise NotImplementedError

    def readout(self, seq: torch.Tensor) -> torch.Tensor:
        """(T, B, size of state 0), zero past each row's end -> outputs (T, B, P), still zero there."""
        raise NotImplementedError

    # -- the loop ---------------------------------------------------------------------------------
    def forward(self, inputs: torch.Tensor, batch_sizes: Sequence[int], state: Optional[tuple] = None,
                masks: Optional[DropoutMasks] = None) -> tuple[torch.Tensor, tuple]:
        """inputs (T, B, in) time-major, rows sorted longest first; see the module docstring."""
        T, B, _ = inputs.shape
        state = self._start(inputs, batch_sizes, state)
        masks = self._masks(T, B, masks, state[0])
        if T == 0:
            return inputs.new_zeros((0, B, self.projection_dim), dtype=self.state_dtype), state
        x = inputs.to(self.state_dtype)
        if masks.input is not None:
            x = x * masks.input  # (T, B, in): one mask per sequence
        xp = self.precompute(x)  # (T, B, G): every step's input product in one matmul

        ended, seq = [[] for _ in state], []
        for t in range(T):
            n = batch_sizes[t]
            if n < state[0].shape[0]:  # rows n.. have finished: keep their final state aside
                for kept, s in zip(ended, state):
                    kept.append(s[n:])
                state = tuple(s[:n] for s in state)
            new = self.step(xp[t, :n], state,
                            None if masks.state is None else masks.state[:n],
                            None if masks.update is None else masks.update[t, :n])
            if self.recurrent_dropout_kind == "zoneout":
                new = tuple(self.zoneout(k, s_new, s_old, masks, t, n)
                            for k, (s_new, s_old) in enumerate(zip(new, state)))
            state = new
            seq.append(state[0])

        final = tuple(torch.cat([s] + kept[::-1], 0) if kept else s for kept, s in zip(ended, state))
        if batch_sizes[-1] == B:
            stacked = torch.stack(seq)
        else:
            stacked = torch.stack([nn.functional.pad(s, (0, 0, 0, B - s.shape[0])) for s in seq])
        out = self.readout(stacked)  # (T, B, P)
        if masks.output is not None:
            out = out * masks.output
        return out, final

    def forward_dense(self, inputs: torch.Tensor, state: Optional[tuple] = None) -> tuple[torch.Tensor, tuple]:
        """Every row for all T steps, in evaluation: ``forward``'s precompute, step and readout
        with the time loop written as a ``while_loop``, which ``torch.export`` captures as one
        loop over a dynamic number of steps (an ONNX ``Loop``); run eagerly it is a Python loop.

        inputs (T, B, in) time-major, any row order. A row's step t reads only its steps before
        t, so at each row's own steps the outputs are ``forward``'s for that row's length; past
        its end they are not zero (the caller masks them), and the final state is the one after
        step T (a row's own final state only for a row of T steps).
        """
        if self.training and self.recurrent_dropout_kind is not None:
            raise ValueError(f"{type(self).__name__}.forward_dense runs in evaluation only "
                             "(its recurrent dropout masks are drawn by forward); call eval()")
        T, B, _ = inputs.shape
        state = tuple(s.contiguous() for s in self._start(inputs, None, state))
        xp = self.precompute(inputs.to(self.state_dtype))  # (T, B, G)
        no_masks = DropoutMasks()

        def running(t, seq, *state):
            return t < xp.shape[0]

        def advance(t, seq, *state):
            at = t.view(1)
            new = self.step(xp.index_select(0, at).squeeze(0), state, None, None)
            if self.recurrent_dropout_kind == "zoneout":
                new = tuple(self.zoneout(k, s_new, s_old, no_masks, t, B)
                            for k, (s_new, s_old) in enumerate(zip(new, state)))
            return (t + 1, seq.index_copy(0, at, new[0].unsqueeze(0)), *new)

        start = torch.zeros((), dtype=torch.long, device=inputs.device)
        seq = xp.new_zeros((T, B, self.state_sizes[0]))
        _, seq, *state = torch.while_loop(running, advance, (start, seq, *state))
        return self.readout(seq), tuple(state)

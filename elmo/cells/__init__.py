"""Recurrent cells for the biLM beyond the original LSTM, and recurrent regularizers.

Every cell is one direction of one biLM layer with the interface of ``elmo.cells.base``: packed
time-major inputs, a per-row final state, stored initial state buffers and an output projected
to the biLM's size P. The stepped cells (all but SRU and QRNN) only say how one step updates
their state; one packed time loop (``SteppedLayer.forward``) runs them all. The biLM stacks
them, runs them in both directions and handles padding and stateful use, so a cell is chosen by
one config field, ``BiLMConfig.cell``:

    lstm            the original cell (elmo.lstm.Lstm; fused in elmo.kernels when plain)
    elman           Elman 1990                     jordan          Jordan 1986
    gru             Cho et al. 2014                peephole        Gers & Schmidhuber 2000
    cifg            Greff et al. 2017              residual-lstm   Kim et al. 2017 / Prakash et al. 2016
    rhn             Zilly et al. 2017              sru             Lei et al. 2017
    qrnn            Bradbury et al. 2017 (fo-pooling, width 2)

Regularizers (``recurrent_dropout_kind``: variational, semeniuta, zoneout) are in
``elmo.cells.regularizers``; ``transition_depth`` adds a deep transition (the RHN's recurrence
depth for ``rhn``).
"""

from __future__ import annotations

from torch import nn

from elmo.cells.base import RecurrentLayer, SteppedLayer
from elmo.cells.cifg import CifgLstm
from elmo.cells.elman import Elman
from elmo.cells.gru import Gru
from elmo.cells.jordan import Jordan
from elmo.cells.peephole import PeepholeLstm
from elmo.cells.qrnn import Qrnn
from elmo.cells.regularizers import KINDS, DropoutMasks
from elmo.cells.residual_lstm import ResidualLstm
from elmo.cells.rhn import Rhn
from elmo.cells.sru import Sru
from elmo.config import CELLS, BiLMConfig
from elmo.lstm import Lstm


# config.cell -> the layer class. The stepped cells take a deep transition; SRU and QRNN do not.
STEPPED_CELLS = {"lstm": Lstm, "elman": Elman, "jordan": Jordan, "gru": Gru, "peephole": PeepholeLstm,
                 "cifg": CifgLstm, "residual-lstm": ResidualLstm, "rhn": Rhn}
PARALLEL_CELLS = {"sru": Sru, "qrnn": Qrnn}


def make_layer(config: BiLMConfig, input_dim: int) -> nn.Module:
    """One direction of one biLM layer for ``config.cell``: input_dim -> projection_dim."""
    options = dict(cell_clip=config.cell_clip, proj_clip=config.proj_clip,
                   recurrent_dropout_kind=config.recurrent_dropout_kind,
                   recurrent_dropout=config.recurrent_dropout)
    if config.cell in STEPPED_CELLS:
        options["transition_depth"] = config.transition_depth
        layer_class = STEPPED_CELLS[config.cell]
    elif config.cell in PARALLEL_CELLS:
        layer_class = PARALLEL_CELLS[config.cell]
    else:
        raise ValueError(f"unknown cell {config.cell!r}; valid cells: {', '.join(CELLS)}")
    return layer_class(input_dim, config.dim, config.projection_dim, **options)


__all__ = [
    "CELLS", "KINDS", "CifgLstm", "DropoutMasks", "Elman", "Gru", "Jordan", "Lstm", "PeepholeLstm",
    "Qrnn", "RecurrentLayer", "ResidualLstm", "Rhn", "SteppedLayer", "Sru", "make_layer",
]

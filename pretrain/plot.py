"""A PNG of a run's curves from ``metrics.jsonl``: training loss and held-out perplexity.

matplotlib is an optional dependency (``pip install elmo-pytorch[plot]``); without it the plot is
skipped with a message and everything else works.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Optional

from elmo.io import atomic_path

logger = logging.getLogger(__name__)


def read_metrics(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _tokens(x: float, _pos=None) -> str:
    return f"{x / 1e6:g}M" if x >= 1e6 else f"{x / 1e3:g}k" if x >= 1e3 else f"{x:g}"


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend, or None (with a warning that names the
    extra) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plot (pip install 'elmo-pytorch[plot]')")
        return None
    return plt


def plot_curves(metrics_path: str, out_path: str, unigram_ppl: Optional[float] = None,
                loss_label: str = "training loss") -> bool:
    """Write the figure; False (and a log message) when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return False
    import matplotlib.ticker
    records = read_metrics(metrics_path)
    train = [r for r in records if "loss_mean" in r]
    held = [r for r in records if "heldout_forward_ppl" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax1.plot([r["tokens"] for r in train], [r["loss_mean"] for r in train], label=loss_label)
    ax1.set_xlabel("training tokens")
    ax1.set_ylabel("loss (nats per token)")
    ax1.set_title("training loss (mean of both directions)")
    if train:
        ax1.legend()
    if held:
        x = [r["tokens"] for r in held]
        ax2.plot(x, [r["heldout_forward_ppl"] for r in held], "o-", label="forward LM")
        backward = [(t, r.get("heldout_backward_ppl")) for t, r in zip(x, held)]
        backward = [(t, p) for t, p in backward if p is not None and math.isfinite(p)]
        if backward:  # none when only the forward LM was trained
            ax2.plot(*zip(*backward), "s-", label="backward LM")
    if unigram_ppl is not None:
        ax2.axhline(unigram_ppl, color="gray", linestyle="--", label="unigram baseline")
    ax2.set_yscale("log")
    ax2.set_xlabel("training tokens")
    ax2.set_ylabel("held-out perplexity (full softmax)")
    ax2.set_title("held-out perplexity")
    if held or unigram_ppl is not None:
        ax2.legend()
    for ax in (ax1, ax2):
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_tokens))
    fig.tight_layout()
    save_figure(fig, out_path)
    return True


def save_figure(fig, path: str, dpi: int = 100) -> None:
    """Write a matplotlib figure as PNG through elmo.io's atomic writer, then close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)

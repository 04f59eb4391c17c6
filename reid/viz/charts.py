"""Charts: CMC curves (cmc.png beside each metrics.json) and ablation tables as bars with error bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    return plt, matplotlib.ticker


def cmc_plot(curves: dict[str, np.ndarray], out: str | Path, title: str = "", max_rank: int = 20) -> Path:
    """CMC curves (fractions, rank 1 first) of each setting, ranks 1..max_rank."""
    plt, ticker = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    for name, cmc in curves.items():
        ranks = np.arange(1, min(max_rank, len(cmc)) + 1)
        ax.plot(ranks, 100 * np.asarray(cmc)[: len(ranks)], marker="o", markersize=3,
                label=f"{name} (R1 {100 * cmc[0]:.1f})")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def ablation_chart(summary: Mapping[str, Any], out: str | Path, title: str = "",
                   paper: Mapping[str, Mapping[str, float]] | None = None) -> Path:
    """One panel per setting: R1 and mAP of each ablation row, mean over seeds with +-1 sample std error bars,
    and the paper's number as a black tick where the paper reports one under the same name."""
    plt, _ = _pyplot()
    rows = list(summary)
    settings = sorted({s for r in summary.values() for s in r})
    fig, axes = plt.subplots(1, len(settings), figsize=(max(5, 0.55 * len(rows) + 2) * len(settings), 3.8),
                             dpi=100, squeeze=False)
    x = np.arange(len(rows))
    for ax, setting in zip(axes[0], settings):
        for k, (key, colour) in enumerate((("R1", "tab:blue"), ("mAP", "tab:orange"))):
            vals = [summary[r].get(setting, {}).get(key, {}) for r in rows]
            mean = [v.get("mean", np.nan) for v in vals]
            std = [v.get("std", 0.0) for v in vals]
            ax.bar(x + (k - 0.5) * 0.38, mean, 0.38, yerr=std, capsize=2, color=colour, label=key)
            for i, r in enumerate(rows):
                ref = (paper or {}).get(r, {})
                value = ref.get(key, ref.get("R-1") if key == "R1" else None)
                if value is not None:
                    ax.plot([x[i] + (k - 0.5) * 0.38 - 0.17, x[i] + (k - 0.5) * 0.38 + 0.17], [value, value],
                            color="black", linewidth=1.5)
        if paper:
            ax.plot([], [], color="black", linewidth=1.5, label="paper (real dataset)")
        ax.set_xticks(x, rows, rotation=40, ha="right", fontsize=7)
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.set_title(f"{title} {setting}".strip(), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out

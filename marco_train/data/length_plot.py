"""The split stage's lengths.png: token lengths of the correct paths by tercile, and of the wrong paths.

Two panels on one length axis, each with its own count axis: correct paths are often a few among hundreds of
wrong ones, and on a shared count axis their terciles would be invisible. The terciles are stacked (one path,
one tercile), so the top panel's bars add up to all correct paths kept. Each legend entry gives n and the median.
"""

from __future__ import annotations

from pathlib import Path
from statistics import median
from typing import Dict, List

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

TERCILE_COLORS = (("shortest", "tab:green"), ("medium", "tab:blue"), ("longest", "tab:red"))


def _label(name: str, values: List[int]) -> str:
    return f"{name} (n={len(values)}, median {median(values):g})" if values else f"{name} (n=0)"


def plot_lengths(lengths: Dict[str, List[int]], path: Path, mode: str = "per_query") -> None:
    """lengths: {"shortest": [...], "medium": [...], "longest": [...], "wrong": [...]} response token counts."""
    fig = Figure(figsize=(7.5, 5.5), dpi=100)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1]})
    values = [v for vs in lengths.values() for v in vs]
    low, high = (min(values), max(values)) if values else (0, 1)
    bins = min(40, max(5, len(set(values)))) if values else 5
    span = (low, high if high > low else low + 1)
    correct = [(name, color, lengths.get(name) or []) for name, color in TERCILE_COLORS]
    shown = [(n, c, v) for n, c, v in correct if v]
    if shown:
        top.hist([v for _, _, v in shown], bins=bins, range=span, stacked=True, color=[c for _, c, _ in shown],
                 label=[_label(n, v) for n, _, v in shown])
        top.legend(fontsize=8)
    else:
        top.text(0.5, 0.5, "no correct paths", ha="center", va="center", transform=top.transAxes)
    top.set_ylabel("correct paths")
    top.set_title(f"Correct paths by {mode.replace('_', '-')} tercile (stacked)", fontsize=10)
    wrong = lengths.get("wrong") or []
    if wrong:
        bottom.hist(wrong, bins=bins, range=span, color="tab:gray", label=_label("wrong", wrong))
        bottom.legend(fontsize=8)
    else:
        bottom.text(0.5, 0.5, "no wrong paths", ha="center", va="center", transform=bottom.transAxes)
    bottom.set_ylabel("wrong paths")
    bottom.set_title("Wrong paths (own count axis)", fontsize=10)
    bottom.set_xlabel("response tokens (training tokenizer)")
    for ax in (top, bottom):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("Path lengths", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)

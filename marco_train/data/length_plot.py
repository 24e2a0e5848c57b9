"""The split stage's lengths.png: histograms of correct-path token lengths per tercile, and of wrong paths."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from matplotlib.figure import Figure


def plot_lengths(lengths: Dict[str, List[int]], path: Path, mode: str = "per_query") -> None:
    """Histograms of correct-path token lengths per tercile (and of wrong paths) as a PNG."""
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    values = [v for vs in lengths.values() for v in vs]
    bins = min(40, max(5, len(set(values)))) if values else 5
    for name, color in (("shortest", "tab:green"), ("medium", "tab:blue"), ("longest", "tab:red"),
                        ("wrong", "tab:gray")):
        if lengths.get(name):
            wrong = name == "wrong"
            ax.hist(lengths[name], bins=bins, range=(min(values), max(values)), color=color,
                    alpha=1.0 if wrong else 0.55, linewidth=1.5, histtype="step" if wrong else "stepfilled",
                    label=f"{name} (n={len(lengths[name])})")
    ax.set_xlabel("response tokens (training tokenizer)")
    ax.set_ylabel("paths")
    ax.set_title(f"Path lengths: correct paths by {mode.replace('_', '-')} tercile; wrong paths")
    if values:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)

"""Per-game CSV -> PNG learning curves. Imports nothing from training, so it can redraw any CSV."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

from a3c.metrics import read_csv  # noqa: E402


def plot_training(csv_path: str | Path, png_path: str | Path, title: str) -> bool:
    """Draw every game's score (faint) and the average of 100 (bold) against frames and hours.

    Returns False, after drawing empty axes that say so, when no game has finished yet."""
    columns = read_csv(csv_path)
    has_games = bool(columns.get("score"))
    if not has_games:
        columns = {name: [] for name in ("frames", "time_s", "score", "avg100")}
    frames_m = [f / 1e6 for f in columns["frames"]]
    hours = [t / 3600 for t in columns["time_s"]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, x, label in ((axes[0], frames_m, "emulator frames (millions)"), (axes[1], hours, "wall-clock hours")):
        ax.plot(x, columns["score"], color="tab:blue", alpha=0.25, linewidth=0.8, label="game score")
        ax.plot(x, columns["avg100"], color="tab:blue", linewidth=2.2, label="average of last 100")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score (whole game)")
    if has_games:
        axes[0].legend(loc="lower right")
    else:
        for ax in axes:
            ax.text(0.5, 0.5, "no finished games yet", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png_path)
    return has_games

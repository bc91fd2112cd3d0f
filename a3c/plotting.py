"""Per-game CSV (and the loss and evaluation CSVs beside it) -> PNG learning curves. Imports nothing from
training, so it can redraw any run."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

from a3c.metrics import read_csv, side_paths  # noqa: E402


def _read_if_present(path: Path) -> dict[str, list[float]]:
    return read_csv(path) if path.exists() else {}


def plot_training(csv_path: str | Path, png_path: str | Path, title: str) -> bool:
    """Draw every game's score (faint), the average of 100 (bold) and the evaluator's means (if any) against
    frames and hours; below, the policy entropy and the losses against frames, from the CSVs beside csv_path.

    Returns False, after drawing empty axes that say so, when no game has finished yet."""
    columns = read_csv(csv_path)
    has_games = bool(columns.get("score"))
    if not has_games:
        columns = {name: [] for name in ("frames", "time_s", "score", "avg100")}
    loss_path, eval_path = side_paths(csv_path)
    losses, evals = _read_if_present(loss_path), _read_if_present(eval_path)
    frames_m = [f / 1e6 for f in columns["frames"]]
    hours = [t / 3600 for t in columns["time_s"]]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), gridspec_kw={"height_ratios": [3, 2]})
    score_axes = ((axes[0, 0], frames_m, "frames", 1e6), (axes[0, 1], hours, "time_s", 3600))
    for ax, x, key, scale in score_axes:
        ax.plot(x, columns["score"], color="tab:blue", alpha=0.25, linewidth=0.8, label="game score")
        ax.plot(x, columns["avg100"], color="tab:blue", linewidth=2.2, label="average of last 100")
        if evals.get("mean"):
            ax.errorbar(
                [v / scale for v in evals[key]], evals["mean"], yerr=evals["std"], color="tab:orange",
                marker="o", markersize=3, linewidth=1.2, capsize=2, label="evaluation (mean +- std)",
            )  # fmt: skip
        ax.grid(alpha=0.3)
    axes[0, 0].set_xlabel("emulator frames (millions)")
    axes[0, 1].set_xlabel("wall-clock hours")
    axes[0, 0].set_ylabel("score (whole game)")
    axes[0, 1].sharey(axes[0, 0])
    if has_games:
        axes[0, 0].legend(loc="lower right")
    else:
        for ax in axes[0]:
            ax.text(0.5, 0.5, "no finished games yet", ha="center", va="center", transform=ax.transAxes)
    entropy_ax, loss_ax = axes[1]
    if losses.get("entropy"):
        x = [f / 1e6 for f in losses["frames"]]
        entropy_ax.plot(x, losses["entropy"], ".", color="tab:green", markersize=2)
        loss_ax.plot(x, losses["value_loss"], ".", color="tab:red", markersize=2, label="value loss")
        loss_ax.plot(x, losses["policy_loss"], ".", color="tab:purple", markersize=2, label="policy loss")
        loss_ax.legend(loc="upper right", markerscale=4)
    else:
        for ax in axes[1]:
            ax.text(0.5, 0.5, "no updates logged yet", ha="center", va="center", transform=ax.transAxes)
    entropy_ax.set_ylabel("policy entropy (nats per step)")
    loss_ax.set_ylabel("loss per update")
    for ax in axes[1]:
        ax.set_xlabel("emulator frames (millions)")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)
    return has_games

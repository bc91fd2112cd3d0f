"""Issue #38's screen, scored by the rule written before its runs (docs/results.md): for each candidate and game,
s = (ours(F_c) - random) / (anchor(B) - random), where F_c = min(B, B x fps_c / fps_default) is the frames the
candidate runs in the minutes the default needs for B; a candidate's value is its lowest s.

    python benchmarks/screen.py --runs /work/runs/screen --budget 2000000 \\
        --fps default=5749 --fps batch8=6112 --fps nature=2077 ...

--runs holds one folder per candidate, as `benchmarks/suite.py --out-dir` leaves it (a folder per game). Prints a
Markdown table; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from a3c.config import game_name  # noqa: E402
from a3c.metrics import read_csv  # noqa: E402

ANCHOR = "RLlib A2C"  # the curve the rule names; every suite game has it
GAMES = ("Breakout", "SpaceInvaders", "Qbert")


def average_at(csv_path: Path, frames: int) -> tuple[float, float] | None:
    """The 100-game average after the last game that ended by `frames`, and the frames the run reached; None if the
    run has not reached `frames`."""
    if not csv_path.exists():
        return None
    columns = read_csv(csv_path)
    ended = [i for i, f in enumerate(columns.get("frames", [])) if f <= frames]
    reached = max(columns.get("frames", [0]))
    if not ended or reached < 0.99 * frames:  # the last game ends a little before the budget
        return None
    return columns["avg100"][ended[-1]], reached


def curves(runs: Path, names: list[str], anchors: dict, budget: int, path: Path) -> None:
    """A panel per game: each candidate's 100-game average against frames, the anchor's points and random play."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(GAMES), figsize=(6 * len(GAMES), 4.5))
    for ax, game in zip(axes, GAMES, strict=True):
        for name in names:
            csv_path = runs / name / f"{game}NoFrameskip-v4" / f"{game}NoFrameskip-v4.csv"
            columns = read_csv(csv_path) if csv_path.exists() else {}
            if columns.get("frames"):
                frames = [f / 1e6 for f in columns["frames"][99:]]
                ax.plot(frames, columns["avg100"][99:], label=name, lw=1.2)
        known = anchors[game_name(f"{game}NoFrameskip-v4")]
        curve = next(c for c in known["curves"] if c["name"].startswith(ANCHOR))
        points = [(float(k[:-1]), v) for k, v in curve["scores"].items() if float(k[:-1]) * 1e6 <= budget]
        ax.plot(*zip(*points, strict=True), "k*", ms=10, label=curve["name"])
        ax.axhline(known["random"]["score"], color="grey", ls=":", label="random play")
        ax.set(title=game, xlabel="frames (millions)", ylabel="100-game average")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="a folder with one folder per candidate")
    parser.add_argument("--budget", type=int, default=2_000_000, help="B: the default's frames")
    parser.add_argument("--fps", action="append", default=[], help="NAME=FRAMES_PER_S, the default's as 'default'")
    parser.add_argument("--plot", help="PNG of every candidate's 100-game average against frames, a panel per game")
    args = parser.parse_args()
    fps = {name: float(value) for name, value in (item.split("=", 1) for item in args.fps)}
    anchors = json.loads((ROOT / "benchmarks" / "anchors.json").read_text())["games"]
    rows = []
    for name in fps:
        frames = int(min(args.budget, args.budget * fps[name] / fps["default"]))
        row: dict = {"candidate": name, "frames": frames, "games": {}}
        for game in GAMES:
            known = anchors[game_name(f"{game}NoFrameskip-v4")]
            curve = next(c for c in known["curves"] if c["name"].startswith(ANCHOR))
            random, anchor = known["random"]["score"], curve["scores"][f"{args.budget // 1_000_000}M"]
            got = average_at(Path(args.runs) / name / f"{game}NoFrameskip-v4" / f"{game}NoFrameskip-v4.csv", frames)
            row["games"][game] = None if got is None else {
                "avg100": round(got[0], 2),
                "score": round((got[0] - random) / (anchor - random), 3),
            }  # fmt: skip
        scores = [g["score"] for g in row["games"].values() if g is not None]
        row["value"] = min(scores) if len(scores) == len(GAMES) else None
        row["upper_bound"] = min(scores) if scores else None  # a value can only fall as games are added
        rows.append(row)

    print(f"| candidate | frames/s | frames in the default's time | {' | '.join(GAMES)} | value |")
    print(f"|---|---:|---:|{'---|' * len(GAMES)}---|")
    for row in rows:
        cells = [
            "-" if g is None else f"{g['avg100']:.2f} ({g['score']:+.3f})" for g in row["games"].values()
        ]  # fmt: skip
        if row["value"] is not None:
            value = f"**{row['value']:+.3f}**"
        else:
            value = "-" if row["upper_bound"] is None else f"at most {row['upper_bound']:+.3f}"
        print(
            f"| {row['candidate']} | {fps[row['candidate']]:,.0f} | {row['frames']:,} | {' | '.join(cells)} | {value} |"
        )
    # Per frame, whatever the speed: what the per-frame bars read (Breakout at 10 by 1.5M frames).
    marks = [args.budget * k // 4 for k in range(1, 5)]
    print(f"\n| candidate | game | {' | '.join(f'{m / 1e6:g}M' for m in marks)} |")
    print(f"|---|---|{'---:|' * len(marks)}")
    for row in rows:
        row["per_frame"] = {}
        for game in GAMES:
            csv_path = Path(args.runs) / row["candidate"] / f"{game}NoFrameskip-v4" / f"{game}NoFrameskip-v4.csv"
            got = [average_at(csv_path, m) for m in marks]
            if any(got):
                row["per_frame"][game] = [None if g is None else round(g[0], 2) for g in got]
                cells = ["-" if g is None else f"{g[0]:.2f}" for g in got]
                print(f"| {row['candidate']} | {game} | {' | '.join(cells)} |")
    if args.plot:
        curves(Path(args.runs), list(fps), anchors, args.budget, Path(args.plot))
    print(json.dumps({"budget": args.budget, "anchor": ANCHOR, "rows": rows}))


if __name__ == "__main__":
    main()

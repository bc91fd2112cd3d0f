"""The default recipe across a suite of Atari games, beside public learning curves.

    python benchmarks/suite.py                                   # the six games, 5M frames each (Breakout 8M)
    python benchmarks/suite.py --games Pong,Qbert --frames 2000000 --lr 2e-4

Each game is one real run of benchmarks/learning.py (the trainer with the game's config, plus any trainer flag
given here, so a candidate recipe is tried across the suite with the same command), one after another. A game whose
run in --out-dir already covers its budget is read back instead of run again; one cut short, or made with the same
settings and another --frames, goes on from its checkpoint (learning.py --use-trained). So an interrupted suite goes
on where it stopped, and a suite run to 2M frames can later be taken to 5M without training the first 2M again.
Writes, in --out-dir: suite.md (the table), suite.png (a grid of learning curves) and suite.json. The table gives the
100-game average at 1M, 2M, 5M and 10M frames, the minutes and frames/s, random play's score and the anchors' scores
at the same frames (benchmarks/anchors.json, each curve with its source). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from a3c.config import game_name, safe_name  # noqa: E402
from a3c.metrics import read_csv  # noqa: E402

GAMES = ("Pong", "Breakout", "SpaceInvaders", "Seaquest", "BeamRider", "Qbert")
AT_FRAMES = {"1M": 1_000_000, "2M": 2_000_000, "5M": 5_000_000, "10M": 10_000_000}
BUDGET = 5_000_000
# Breakout's own goal (issue #23) is a 100-game average of 60 within 20 minutes on 2 cores: about 8M frames.
LONGER = {"breakout": 8_000_000}
ANCHORS = ROOT / "benchmarks" / "anchors.json"


def env_id(game: str) -> str:
    """Pong (any case) -> PongNoFrameskip-v4; a full id is kept as given."""
    if "-v" in game:
        return game
    known = {name.lower(): name for name in GAMES}
    return f"{known.get(game.lower(), game)}NoFrameskip-v4"


def solved(summary: dict) -> bool:
    """Whether the run stopped because its 100-game average reached the game's target (Pong's 18)."""
    target, final = summary.get("target_reward"), summary.get("final_avg100")
    return target is not None and final is not None and summary["games"] >= 100 and final >= target


def score_at(
    columns: dict[str, list[float]], frames: int, trained: int, stopped_solved: bool
) -> tuple[float, int] | None:
    """The running average (of up to 100 games) after the last game that ended by `frames`, and how many games it
    averages. None if training stopped before `frames` (unless it stopped there solved: then its final average) or
    no game had ended by then. `trained` is the frames trained in all, later than the last game's end."""
    if trained < frames and not stopped_solved:
        return None
    ended = [i for i, f in enumerate(columns.get("frames", [])) if f <= frames]
    if not ended:
        return None
    last = ended[-1]
    return columns["avg100"][last], min(last + 1, 100)


def without_budget(args: list[str]) -> list[str]:
    """A run's learning.py arguments less its --max-frames, which a longer suite may raise."""
    k = args.index("--max-frames")
    return args[:k] + args[k + 2 :]


def run_game(game: str, frames: int, out: Path, args: list[str]) -> dict:
    """learning.py's summary of this game's run with args. A run in `out` made with the same args is read back
    when it ended well and covers `frames`; one made with the same args but another budget, or cut short, goes on
    from its checkpoint; one made with other args is never mixed in or overwritten."""
    summary_path, args_path = out / "learning.json", out / "suite-args.json"
    checkpoint = out / f"{safe_name(args[args.index('--env-name') + 1])}.pt"
    go_on = False
    if args_path.exists():
        before = json.loads(args_path.read_text())
        if without_budget(before) != without_budget(args):
            raise SystemExit(
                f"suite.py: {out} holds a run made with other settings ({' '.join(before)}); give another --out-dir"
            )
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
            if summary["exit_status"] == 0 and (summary.get("frames_trained", 0) >= frames or solved(summary)):
                print(f"{game}: reusing {summary_path} ({summary['frames_trained']:,} frames)", flush=True)
                return summary
        # A run given a new budget, or cut short, goes on from its checkpoint rather than train again over it.
        go_on = checkpoint.exists()
    out.mkdir(parents=True, exist_ok=True)
    summary_path.unlink(missing_ok=True)  # a summary left by an earlier run must not stand in for this one
    args_path.write_text(json.dumps(args))
    print(f"{game}: {f'going on from {checkpoint}: ' if go_on else ''}learning.py {' '.join(args)}", flush=True)
    command = [sys.executable, str(ROOT / "benchmarks" / "learning.py"), *args, "--out-dir", str(out)]
    command += ["--use-trained"] if go_on else []
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    if done.returncode != 0 or not summary_path.exists():
        raise SystemExit(f"suite.py: {game}'s run ended with status {done.returncode}; its log is in {out}")
    return json.loads(summary_path.read_text())


def table(rows: list[dict], anchors: dict) -> str:
    """The suite as a Markdown table: ours at each frame count, then random play and each anchor curve."""
    marks = list(AT_FRAMES)
    lines = [
        f"| game | curve | {' | '.join(marks)} | minutes | frames/s |",
        "|---|---|" + "---|" * len(marks) + "---|---|",
    ]
    for row in rows:
        cells = []
        for mark in marks:
            hit = row["at"][mark]
            cells.append("-" if hit is None else f"{hit[0]:.1f}" + ("" if hit[1] >= 100 else f" ({hit[1]} games)"))
        name = "a3c" + (f", solved at {row['solved_at_frames'] / 1e6:.2f}M" if row["solved_at_frames"] else "")
        name += f", ended with exit status {row['exit_status']}" if row["exit_status"] != 0 else ""
        lines.append(
            f"| **{row['game']}** | {name} | {' | '.join(cells)} | {row['minutes']:.1f} | {row['frames_per_s']:,.0f} |"
        )
        known = anchors.get(game_name(env_id(row["game"])), {})
        if "random" in known:
            random_score = f"{known['random']['score']:g}"
            lines.append(f"| | random play | {' | '.join([random_score] * len(marks))} | | |")
        for curve in known.get("curves", []):
            values = [curve["scores"].get(mark) for mark in marks]
            cells = ["-" if v is None else f"{v:g}" for v in values]
            lines.append(f"| | {curve['name']} | {' | '.join(cells)} | | |")
    return "\n".join(lines)


def grid(rows: list[dict], curves: dict[str, dict[str, list[float]]], anchors: dict, path: Path) -> None:
    """One panel per game: our 100-game average against frames, the anchors' points and random play's score."""
    cols = 3
    nrows = (len(rows) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(rows) :]:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows, strict=False):
        columns = curves[row["game"]]
        frames_m = [f / 1e6 for f in columns.get("frames", [])]
        ax.plot(frames_m, columns.get("avg100", []), color="black", label="a3c, 100-game average")
        known = anchors.get(game_name(env_id(row["game"])), {})
        for k, curve in enumerate(known.get("curves", [])):
            points = [(AT_FRAMES[m] / 1e6, v) for m, v in curve["scores"].items() if v is not None]
            ax.plot(*zip(*points, strict=True), marker="o", linestyle=":", color=f"C{k}", label=curve["name"][:40])
        if "random" in known:
            ax.axhline(known["random"]["score"], color="grey", linestyle="--", linewidth=1, label="random play")
        ax.set_title(row["game"])
        ax.set_xlabel("frames (M)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    """Run (or read back) every game's run, then write the table, the grid and the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", default=",".join(GAMES), help="comma-separated games or env ids")
    parser.add_argument("--frames", type=int, help=f"frames per game (default {BUDGET:,}; Breakout 8M)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n-workers", type=int)
    parser.add_argument("--out-dir", help="folder for every game's run and the suite's files")
    args, extra = parser.parse_known_args()
    games = [g.strip() for g in args.games.split(",") if g.strip()]
    if not games:
        raise SystemExit("suite.py: --games is empty")
    out_dir = Path(args.out_dir or ROOT / "benchmarks" / "out" / f"suite-seed{args.seed}")
    out_dir.mkdir(parents=True, exist_ok=True)
    anchors = json.loads(ANCHORS.read_text())["games"]

    rows, curves = [], {}
    for game in games:
        frames = args.frames or LONGER.get(game_name(env_id(game)), BUDGET)
        out = out_dir / safe_name(env_id(game))
        run_args = ["--env-name", env_id(game), "--max-frames", str(frames), "--seed", str(args.seed), *extra]
        if args.n_workers is not None:
            run_args += ["--n-workers", str(args.n_workers)]
        summary = run_game(game, frames, out, run_args)
        columns = read_csv(out / f"{safe_name(env_id(game))}.csv")
        curves[game] = columns
        seconds = max(summary["seconds"], 1e-9)
        rows.append(
            {
                "game": game,
                "env_name": summary["env_name"],
                "frames": summary["frames_trained"],
                "minutes": seconds / 60,
                "frames_per_s": summary["frames"] / seconds,  # both at the last game's end
                "exit_status": summary["exit_status"],
                "commit": summary["commit"],
                "at": {
                    mark: score_at(columns, f, summary["frames_trained"], solved(summary))
                    for mark, f in AT_FRAMES.items()
                },
                "solved_at_frames": summary["frames"] if solved(summary) else None,
                "final_avg100": summary["final_avg100"],
                "settings": summary["settings"] | {"lr": summary["lr"], "arch": summary["arch"]},
            }
        )
    markdown = table(rows, anchors)
    (out_dir / "suite.md").write_text(markdown + "\n")
    grid(rows, curves, anchors, out_dir / "suite.png")
    print("\n" + markdown + "\n")
    result = {
        "out_dir": str(out_dir),
        "games": rows,
        "table": str(out_dir / "suite.md"),
        "plot": str(out_dir / "suite.png"),
    }
    (out_dir / "suite.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

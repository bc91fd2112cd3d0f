"""How fast the trainer learns: frames and wall-clock seconds to each milestone of the 100-game average.

    python benchmarks/learning.py --env-name PongNoFrameskip-v4 --n-workers 2 --max-seconds 1800

Every flag of main.py is accepted and builds the config exactly as main.py does; the real trainer runs with its
checkpoint, CSV and plot in its own folder (--out-dir). A milestone counts once 100 games have been played and
their average reaches it. Prints a table; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from a3c.cli import make_fleet, make_parser  # noqa: E402
from a3c.config import build_config, game_name  # noqa: E402
from a3c.metrics import WINDOW, read_csv  # noqa: E402
from a3c.trainer import Trainer  # noqa: E402

MILESTONES = {
    "pong": [-20, -15, -10, -5, 0, 5, 10, 15, 18],
    "breakout": [5, 10, 20, 30, 40, 60, 100, 200],
    "cartpole": [50, 100, 150, 195],
}

# Every other setting that shapes learning, so a summary says which run it was without its command line.
LEARNING_SETTINGS = tuple(
    "adam_beta1 adam_eps lr_end lr_anneal_start lr_anneal_frames gamma gae_lambda entropy_coef value_loss_coef "
    "max_grad_norm rollout_len hidden_size fc_layer frame_skip frame_size frame_stack standardize_frames "
    "crop_top crop_bottom noop_max terminal_on_life_loss clip_rewards fresh_gradients".split()
)


def milestones_reached(csv_path: Path, milestones: list[float]) -> dict[str, dict[str, float] | None]:
    """For each milestone, frames and training seconds of the first game at which the 100-game average reached it."""
    columns = read_csv(csv_path)
    reached: dict[str, dict[str, float] | None] = {}
    for milestone in milestones:
        reached[f"{milestone:g}"] = None
        for i, avg in enumerate(columns.get("avg100", [])):
            if i + 1 >= WINDOW and avg >= milestone:
                reached[f"{milestone:g}"] = {
                    "frames": int(columns["frames"][i]),
                    "seconds": round(columns["time_s"][i], 1),
                    "games": i + 1,
                }
                break
    return reached


def main() -> None:
    own = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    own.add_argument("--out-dir", help="folder for the run's checkpoint, CSV and plot")
    own_args, rest = own.parse_known_args()
    trainer_args = vars(make_parser().parse_args(rest))
    config_file = trainer_args.pop("config_file", None)
    for key in ("verbose", "plot_only"):
        trainer_args.pop(key, None)
    cfg = build_config(trainer_args, config_file)
    out = Path(own_args.out_dir or ROOT / "benchmarks" / "out" / f"learning-{cfg.run_name}-seed{cfg.seed}")
    cfg = cfg.replace(checkpoint_dir=str(out), plot_dir=str(out))
    if cfg.max_seconds == 0 and cfg.max_frames == 0 and cfg.target_reward is None:
        raise SystemExit("learning.py: give --max-seconds or --max-frames (or a --target-reward) so the run ends")

    trainer = Trainer(cfg, make_fleet(cfg))  # a Ray cluster's hosts with --ray-address, as main.py would
    status = trainer.run()
    cfg = trainer.cfg  # as the trainer ran it: a resumed run keeps its checkpoint's network, --learner auto resolved
    milestones = MILESTONES.get(game_name(cfg.env_name), [cfg.target_reward] if cfg.target_reward is not None else [])
    reached = milestones_reached(cfg.csv_path, milestones)
    columns = read_csv(cfg.csv_path)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()

    print(
        f"\n{cfg.env_name}: {cfg.n_workers} workers x {cfg.envs_per_worker} env(s), --opt {cfg.opt} --lr {cfg.lr:g}, seed {cfg.seed}"
    )
    print(f"{'avg100 >=':>10}{'frames':>14}{'minutes':>10}{'games':>8}")
    for milestone, hit in reached.items():
        if hit is None:
            print(f"{milestone:>10}{'-':>14}{'-':>10}{'-':>8}")
        else:
            print(f"{milestone:>10}{hit['frames']:>14,}{hit['seconds'] / 60:>10.1f}{hit['games']:>8}")
    summary = {
        "env_name": cfg.env_name,
        "n_workers": cfg.n_workers,
        "envs_per_worker": cfg.envs_per_worker,
        "opt": cfg.opt,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "arch": cfg.arch,
        "learner": cfg.learner,
        "ray_address": cfg.ray_address,
        "hosts": len(getattr(trainer.fleet, "nodes", [])) or None,
        "commit": commit,
        "exit_status": status,
        "games": len(columns.get("score", [])),
        "frames": int(columns["frames"][-1]) if columns.get("frames") else 0,  # when the last game ended
        "frames_trained": trainer.fleet.counts().frames,  # when training stopped
        "max_frames": cfg.max_frames,
        "seconds": round(columns["time_s"][-1], 1) if columns.get("time_s") else 0.0,
        "final_avg100": columns["avg100"][-1] if columns.get("avg100") else None,
        "target_reward": cfg.target_reward,
        "milestones": reached,
        "settings": {name: getattr(cfg, name) for name in LEARNING_SETTINGS},
        "plot": str(cfg.plot_path),
    }
    (out / "learning.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""Stress the shared model: many Hogwild workers at a high update rate, checking the shared weights and optimizer
statistics stay finite and bounded at every save.

    python benchmarks/stress.py --n-workers 16 --minutes 1                   # the CI-sized run
    python benchmarks/stress.py --n-workers 32 --minutes 30                  # the long one
    python benchmarks/stress.py --n-workers 16 --minutes 1 --no-lock-step    # the paper's lock-free step
    python benchmarks/stress.py --n-workers 16 --minutes 1 --poison-after 20 # NaN written into the shared weights

The real trainer runs a small real game (CartPole by default: the update rate is highest there) with 5-step
rollouts and a save every 2 s; every save and every health check runs shared_optim.find_damage (a non-finite weight
or statistic, or Adam's two averages out of step) and rolls the damage back. Beside it a thread samples how close
Adam's averages come to their bound (adam_moment_bound). --poison-after writes NaN into a shared weight that many
seconds into training, as a real divergence would, to show the run recovers. Prints a summary; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from a3c.config import build_config  # noqa: E402
from a3c.fleet import LocalFleet  # noqa: E402
from a3c.shared_optim import adam_moment_bound, find_damage  # noqa: E402
from a3c.trainer import Trainer  # noqa: E402


def moment_ratio(optimizer: torch.optim.Optimizer) -> float:
    """The largest |exp_avg| / (sqrt(exp_avg_sq) + eps) over every statistic, as a fraction of Adam's bound (<= 1
    while the two averages move together); 0 for optimizers without them."""
    worst = 0.0
    for group in optimizer.param_groups:
        if "betas" not in group:
            continue
        bound = adam_moment_bound(*group["betas"])
        for p in group["params"]:
            state = optimizer.state[p]
            ratio = state["exp_avg"].abs() / (state["exp_avg_sq"].sqrt() + group["eps"])
            worst = max(worst, float(ratio.max()) / bound)
    return worst


def watch(trainer: Trainer, stop: threading.Event, seconds: float, poison_after: float, report: dict) -> None:
    """Sample the moment ratio every 0.5 s of the run; with poison_after, write NaN into the first conv or linear
    weight that many seconds after the first frame was counted; end the run (SIGTERM, as a user would) seconds
    after that first frame, so the workers' start-up does not eat the budget."""
    first_frame_at = None
    while not stop.wait(0.5):
        report["peak_moment_ratio"] = max(report["peak_moment_ratio"], moment_ratio(trainer.optimizer))
        if first_frame_at is None and trainer.fleet.shared.counters.frames() > 0:
            first_frame_at = time.monotonic()
            report["frames_at_start"] = trainer.fleet.shared.counters.frames()
        if first_frame_at is not None and time.monotonic() - first_frame_at >= seconds and not report["ended"]:
            report["ended"] = True
            os.kill(os.getpid(), signal.SIGTERM)
        if poison_after and first_frame_at is not None and report["poisoned_at_frames"] is None:
            if time.monotonic() - first_frame_at >= poison_after:
                weight = next(p for p in trainer.model.parameters() if p.dim() >= 2)
                with torch.no_grad():
                    weight.view(-1)[:10] = float("nan")
                report["poisoned_at_frames"] = trainer.fleet.shared.counters.frames()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-name", default="CartPole-v1")
    parser.add_argument("--n-workers", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--rs", type=int, default=5, help="rollout length: short rollouts, many updates")
    parser.add_argument("--lr", type=float, help="default: the game's")
    parser.add_argument("--lock-step", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--poison-after", type=float, default=0.0, help="seconds of training, then NaN (0: never)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="a3c-stress-") as out:
        overrides: dict[str, object] = {
            "env_name": args.env_name,
            "n_workers": args.n_workers,
            "rollout_len": args.rs,
            "lock_step": args.lock_step,
            "seed": args.seed,
            "target_reward": 1e9,  # the watcher ends the run
            "save_interval_s": 2.0,
            "checkpoint_dir": out,
            "plot_dir": out,
        }
        if args.lr is not None:
            overrides["lr"] = args.lr
        cfg = build_config(overrides)
        trainer = Trainer(cfg, LocalFleet(cfg))
        report = {"peak_moment_ratio": 0.0, "poisoned_at_frames": None, "ended": False, "frames_at_start": 0}
        stop = threading.Event()
        watcher = threading.Thread(
            target=watch, args=(trainer, stop, args.minutes * 60, args.poison_after, report), daemon=True
        )
        watcher.start()
        try:
            status = trainer.run()
        finally:
            stop.set()
            watcher.join()
        seconds = args.minutes * 60
        updates = trainer.fleet.shared.counters.updates()
        summary = {
            "env_name": trainer.cfg.env_name,
            "n_workers": trainer.cfg.n_workers,
            "minutes": args.minutes,
            "lock_step": cfg.lock_step,
            "rollout_len": cfg.rollout_len,
            "lr": trainer.cfg.lr,
            "exit_status": status,
            "stop_reason": trainer.stop_reason,
            "frames": trainer.fleet.shared.counters.frames(),
            "updates": updates,
            "updates_per_s": round(updates / seconds, 1),  # the few before the first frame counted are noise
            "skipped_updates": trainer.fleet.shared.counters.totals().skipped_updates,
            "poisoned_at_frames": report["poisoned_at_frames"],
            "rollbacks": trainer.health.rollbacks,
            "damage": [f"{what} at {frames:,} frames" for frames, what in trainer.health.damage_seen],
            "damage_at_end": find_damage(trainer.model, trainer.optimizer),
            "peak_moment_ratio": round(report["peak_moment_ratio"], 4),
            "max_abs_weight": round(max(float(p.detach().abs().max()) for p in trainer.model.parameters()), 3),
        }
    print(
        f"\n{summary['n_workers']} workers, {summary['minutes']:g} min, lock_step={summary['lock_step']}: "
        f"{summary['updates']:,} updates ({summary['updates_per_s']}/s), {summary['rollbacks']} rollback(s), "
        f"Adam's averages at most {summary['peak_moment_ratio']:.2f} of their bound, "
        f"damage at the end: {summary['damage_at_end'] or 'none'}"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

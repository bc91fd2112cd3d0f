"""Training throughput against the bare emulator, in one run.

    python benchmarks/throughput.py --env-name PongNoFrameskip-v4 --n-workers 2 --seconds 60
    python benchmarks/throughput.py --learner tape,autograd --runs 3    # both learners, alternated within each run
    python benchmarks/throughput.py --variant "paper=--arch paper --frame-size 84 --frame-stack 4 --fc-layer"
        # the default and a variant given as main.py flags, alternated within each run

1. Ceiling: n processes step the game through gymnasium's AtariPreprocessing and wrappers (make_reference_env, the
   same game as training's make_env, which skips the wrappers' overhead) with random actions.
2. Training: the real Trainer (the code path of main.py) with n workers, measured for the same seconds after a
   warm-up, start-up excluded, once for each --learner and --variant given (in that order within every run, so that
   a drift of the machine's speed touches each alike). The ceiling is the default's game, so a variant with other
   frames (size, stack) is measured against the same ceiling: its ratio compares it with the default. Outputs go
   to a temporary folder, never the repository's checkpoints/ or plots/.
3. Where a worker's time goes (from the workers' own timers), and the memory (unique set size) of the parent and
   each worker with 2 and 8 workers (--memory-workers).
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the gymnasium reference stack lives beside the tests that hold it equal

from reference_env import make_reference_env  # noqa: E402

from a3c.cli import make_parser  # noqa: E402
from a3c.config import build_config  # noqa: E402
from a3c.envs import frames_per_step  # noqa: E402
from a3c.fleet import LocalFleet  # noqa: E402
from a3c.trainer import Trainer  # noqa: E402


def _step_randomly(cfg, seed: int, seconds: float, results) -> None:
    env = make_reference_env(cfg, seed=seed)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    n_actions = env.action_space.n
    skip = frames_per_step(cfg)
    warm_end = time.perf_counter() + 2.0
    while time.perf_counter() < warm_end:
        _, _, term, trunc, _ = env.step(int(rng.integers(n_actions)))
        if term or trunc:
            env.reset()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        _, _, term, trunc, _ = env.step(int(rng.integers(n_actions)))
        steps += 1
        if term or trunc:
            env.reset()
    results.put(steps * skip / (time.perf_counter() - start))


def measure_ceiling(cfg, n: int, seconds: float) -> float:
    """Emulator frames/s of n processes stepping gymnasium's stack (make_reference_env) with random actions."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_step_randomly, args=(cfg, cfg.seed + i, seconds, results)) for i in range(n)]
    for p in procs:
        p.start()
    rates = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def uss_mib(pid: int) -> float:
    """Unique set size (private pages) of a process, MiB, from /proc."""
    total_kb = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total_kb += int(line.split()[1])
    return total_kb / 1024


def measure_training(cfg, seconds: float, warmup: float) -> dict:
    """Run the real trainer; frames/s and updates/s over `seconds` after the first frames plus `warmup`."""
    # A folder of its own for each measurement: a run never writes over another (a3c/run_files.py refuses to).
    out = tempfile.mkdtemp(prefix="run-", dir=Path(cfg.checkpoint_dir).parent)  # inside the temporary folder
    cfg = cfg.replace(max_seconds=0.0, checkpoint_dir=f"{out}/checkpoints", plot_dir=f"{out}/plots")
    trainer = Trainer(cfg, LocalFleet(cfg))
    marks: dict[str, tuple[float, int, int]] = {}
    memory: dict[str, float] = {}

    def monitor() -> None:
        counters = trainer.fleet.shared.counters
        while counters.frames() == trainer.counters["frames"] and trainer.stop_reason is None:
            time.sleep(0.05)  # start-up: spawning, imports, env creation
        time.sleep(warmup)
        marks["start"] = (time.monotonic(), counters.frames(), counters.updates())
        time.sleep(seconds)
        marks["end"] = (time.monotonic(), counters.frames(), counters.updates())
        import os

        memory["parent"] = uss_mib(os.getpid())
        for rank, child in trainer.fleet.group.children.items():
            try:
                memory[f"worker-{rank}"] = uss_mib(child.process.pid)
            except OSError:
                pass
        trainer._request_stop("benchmark finished")

    thread = threading.Thread(target=monitor, daemon=True)
    thread.start()
    trainer.run()
    thread.join()
    (t0, f0, u0), (t1, f1, u1) = marks["start"], marks["end"]
    stats = trainer.worker_stats.values()
    total = {k: sum(s.seconds[k] for s in stats) for k in ("env", "inference", "learn", "sync", "waiting")}
    steps = sum(s.agent_steps for s in stats) or 1
    return {
        "learner": trainer.cfg.learner,
        "frames_per_s": (f1 - f0) / (t1 - t0),
        "updates_per_s": (u1 - u0) / (t1 - t0),
        "time_share": {k: v / (sum(total.values()) or 1) for k, v in total.items()},
        "us_per_agent_step": {k: v / steps * 1e6 for k, v in total.items()},
        "memory_mib": memory,
    }


def variant_overrides(spec: str) -> tuple[str, str, dict]:
    """'NAME=FLAGS' (main.py's flags) as the name, the flags and the config overrides those flags give."""
    name, _, flags = spec.partition("=")
    if not name.strip() or not flags.strip():
        raise SystemExit(f"throughput.py: --variant takes NAME=FLAGS, got {spec!r}")
    overrides = vars(make_parser().parse_args(shlex.split(flags)))
    # The ceiling is the game's, stepped by n_workers processes: a variant with more games per worker is measured
    # against the same ceiling (a process steps one game at a time either way).
    unsupported = {"config_file", "env_name", "n_workers"} & overrides.keys()
    if unsupported:
        raise SystemExit(f"throughput.py: give {', '.join(sorted(unsupported))} as this script's own flags")
    return name.strip(), flags.strip(), overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-name", default="PongNoFrameskip-v4")
    parser.add_argument("--n-workers", type=int, default=2)
    parser.add_argument("--envs-per-worker", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of training before measuring")
    parser.add_argument("--runs", type=int, default=1, help="repeat ceiling + training; the JSON reports medians")
    parser.add_argument(
        "--learner", default="auto", help="comma-separated learners to measure (auto, tape, autograd), each every run"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=FLAGS: also measure the run main.py FLAGS would give, beside the default (repeatable)",
    )
    parser.add_argument("--memory-workers", default="2,8", help="worker counts for the memory table ('' to skip)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="a3c-bench-") as out:
        cfg = build_config(
            {
                "env_name": args.env_name,
                "n_workers": args.n_workers,
                "envs_per_worker": args.envs_per_worker,
                "checkpoint_dir": f"{out}/checkpoints",
                "plot_dir": f"{out}/plots",
                "save_interval_s": 1e9,
            }
        )
        learners = [name.strip() for name in args.learner.split(",") if name.strip()]
        variants = [("default", "", {})] + [variant_overrides(spec) for spec in args.variant]
        # What each run measures, by label: every variant with every learner.
        setups = {
            (f"{variant} " if args.variant else "") + f"--learner {learner}": cfg.replace(**overrides, learner=learner)
            for variant, _, overrides in variants
            for learner in learners
        }
        runs: dict[str, list[tuple[float, dict]]] = {label: [] for label in setups}
        for run in range(args.runs):
            ceiling = measure_ceiling(cfg, args.n_workers, args.seconds)
            for name, setup in setups.items():
                training = measure_training(setup, args.seconds, args.warmup)
                runs[name].append((ceiling, training))
                print(
                    f"run {run + 1}, {name} ({training['learner']}): ceiling {ceiling:,.0f} frames/s, "
                    f"training {training['frames_per_s']:,.0f} frames/s, ratio {training['frames_per_s'] / ceiling:.3f}, "
                    f"{training['updates_per_s']:.1f} updates/s",
                    flush=True,
                )

        memory = {}
        for n in [int(x) for x in args.memory_workers.split(",") if x.strip()]:
            mem_cfg = cfg.replace(n_workers=n, learner=learners[0])
            memory[n] = measure_training(mem_cfg, seconds=5.0, warmup=5.0)["memory_mib"]

    print()
    print(f"{args.env_name}, {args.n_workers} workers x {args.envs_per_worker} env(s), {args.seconds:g} s each")
    results = {}
    for name, measured in runs.items():
        ratios = [t["frames_per_s"] / c for c, t in measured]
        median = sorted(range(len(measured)), key=lambda i: ratios[i])[len(measured) // 2]
        ceiling, training = measured[median]
        print(f"\n{name} ({training['learner']}), the median run of {len(measured)}")
        print(f"{'':28}{'frames/s':>12}")
        print(f"{'ceiling (random actions)':28}{ceiling:>12,.0f}")
        print(f"{'training':28}{training['frames_per_s']:>12,.0f}")
        print(f"{'ratio (median of runs)':28}{statistics.median(ratios):>12.3f}")
        print(f"{'updates/s':28}{training['updates_per_s']:>12.1f}")
        print("where a worker's time goes")
        for key, share in training["time_share"].items():
            print(f"  {key:12}{share:>8.1%}{training['us_per_agent_step'][key]:>10.0f} us/agent step")
        results[name] = {
            "learner": training["learner"],
            "ceiling_frames_per_s": round(ceiling, 1),
            "train_frames_per_s": round(training["frames_per_s"], 1),
            "ratio": round(statistics.median(ratios), 4),
            "ratios": [round(r, 4) for r in ratios],
            "updates_per_s": round(training["updates_per_s"], 2),
            "time_share": {k: round(v, 4) for k, v in training["time_share"].items()},
            "us_per_agent_step": {k: round(v, 1) for k, v in training["us_per_agent_step"].items()},
        }
    for n, mem in memory.items():
        print(f"\nmemory with {n} workers (USS, MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in mem.items()))
    first = next(iter(results.values()))
    summary = {
        "env_name": args.env_name,
        "n_workers": args.n_workers,
        "envs_per_worker": args.envs_per_worker,
        "seconds": args.seconds,
        "runs": args.runs,
        **first,  # the first setup's figures at the top level, as before --learner existed
        "learners": results,  # by label: the learner, after the variant's name where --variant was given
        "variants": {name: flags for name, flags, _ in variants},
        "memory_mib": {str(n): {k: round(v, 1) for k, v in mem.items()} for n, mem in memory.items()},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

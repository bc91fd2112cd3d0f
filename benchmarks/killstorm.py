"""Kill storm: SIGKILL a training run's children at random moments, many times, and count what went wrong.

    python benchmarks/killstorm.py --target workers --kills 100          # random workers
    python benchmarks/killstorm.py --target evaluator --kills 30         # the evaluator process
    python benchmarks/killstorm.py --target forkserver --kills 30        # the fork server the workers come from
    python benchmarks/killstorm.py --target all --kills 100              # any of them

Each run is the real main.py (CartPole by default, 2 workers, 5-step rollouts: the most updates, records and lock
traffic a second) in a subprocess. Kills come after a random delay. After each kill the run must go on: new games
reach the CSV, and a killed worker or evaluator is reported and replaced. A run may instead end by the death rule
(a rank that died 5 times in 10 minutes: exit status 1 and a line that says so). After --kills-per-run kills the run
gets a Ctrl-C, which must end it within 15 s; then its checkpoint must load and no process of the run may be left.
Each run starts afresh in a folder of its own, so games stay short and records many.

Counted as failures: a hang (no progress or no report of the death within --patience seconds, or Ctrl-C not done
within 15 s), a false death (a killed fork server reported as dead workers: they live on), an orphan (a process of
the run alive 10 s after the trainer exited), an unloadable checkpoint, and a run that ended any other way. Prints a
table; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from a3c.checkpoint import CheckpointError, load_checkpoint  # noqa: E402

CTRL_C_LIMIT_S = 15.0
ORPHAN_GRACE_S = 10.0
FALSE_DEATH_WAIT_S = 1.0  # after a killed fork server, how long to look for deaths the trainer should not report
TARGETS = ("workers", "evaluator", "forkserver", "all")


def proc_read(pid: int, name: str) -> bytes | None:
    try:
        return Path("/proc", str(pid), name).read_bytes()
    except OSError:
        return None


def run_processes(marker: str) -> dict[int, tuple[str, int]]:
    """Live processes of the run (tagged by the marker in their environment): pid -> (comm, parent pid)."""
    needle = f"A3C_TEST_MARKER={marker}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        environ, stat = proc_read(pid, "environ"), proc_read(pid, "stat")
        if environ is None or stat is None or needle not in environ.split(b"\0"):
            continue
        comm, rest = stat.decode().rsplit(")", 1)
        fields = rest.split()
        if fields[0] == "Z":
            continue
        found[pid] = (comm.split("(", 1)[1], int(fields[1]))
    return found


def children_of(trainer: int, marker: str) -> dict[str, list[int]]:
    """The run's children by kind: workers and the evaluator (named a3c:worker-N and a3c:evaluator by the run), and
    the fork server (the trainer's child whose command line says so)."""
    kinds: dict[str, list[int]] = {"workers": [], "evaluator": [], "forkserver": []}
    for pid, (comm, parent) in run_processes(marker).items():
        if comm.startswith("a3c:worker"):
            kinds["workers"].append(pid)
        elif comm.startswith("a3c:eval"):
            kinds["evaluator"].append(pid)
        elif parent == trainer and b"multiprocessing.forkserver" in (proc_read(pid, "cmdline") or b""):
            kinds["forkserver"].append(pid)
    if not kinds["workers"] and kinds["forkserver"]:  # children not named (an older a3c): the server's children
        kinds["workers"] = [pid for pid, (_, parent) in run_processes(marker).items() if parent in kinds["forkserver"]]
    return kinds


class Run:
    """One main.py run with its logs, and what its CSV and stderr say so far."""

    def __init__(self, args: argparse.Namespace, out: Path, index: int):
        self.marker = uuid.uuid4().hex
        self.out = out
        self.logs = out / f"run{index}"
        self.logs.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, str(ROOT / "main.py"), "--env-name", args.env_name, "--n-workers", str(args.n_workers),
            "--rs", str(args.rs), "--seed", str(args.seed + index), "--save-interval", str(args.save_interval),
            "--target-reward", "1e9", "--checkpoint-dir", str(self.logs / "ck"), "--plot-dir", str(self.logs / "pl"),
        ]  # fmt: skip
        argv += args.main_args.split()
        if args.target in ("evaluator", "all"):
            argv += ["--eval-interval", str(args.eval_interval), "--episodes", "2"]
        env = {**os.environ, "A3C_TEST_MARKER": self.marker}
        self.stdout = open(self.logs / "stdout", "w")  # noqa: SIM115 - closed in finish()
        self.stderr = open(self.logs / "stderr", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self.stdout, stderr=self.stderr)
        self.csv = self.logs / "pl" / f"{args.env_name.replace('/', '_')}.csv"
        self.checkpoint = self.logs / "ck" / f"{args.env_name.replace('/', '_')}.pt"

    def games(self) -> int:
        try:
            return max(0, len(self.csv.read_text().splitlines()) - 1)
        except OSError:
            return 0

    def err(self) -> str:
        return (self.logs / "stderr").read_text()

    def out_text(self) -> str:
        return (self.logs / "stdout").read_text()

    def finish(self) -> None:
        self.stdout.close()
        self.stderr.close()


def dump_stacks(run: Run, path: Path) -> None:
    """py-spy's stacks of every process of the run, for a hang's post-mortem."""
    with open(path, "w") as f:
        for pid, (comm, parent) in sorted(run_processes(run.marker).items()):
            done = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
            f.write(f"=== {pid} {comm} (parent {parent})\n{done.stdout}{done.stderr}\n")
    print(f"stacks of the hung run: {path}", flush=True)
    print(path.read_text(), flush=True)


def wait_until(condition, timeout: float, poll_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll_s)
    return bool(condition())


def storm(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    counts = {kind: 0 for kind in ("workers", "evaluator", "forkserver")}
    failures: list[str] = []
    hangs = orphans = unloadable = runs = death_rule_ends = false_deaths = 0
    kills = 0
    with tempfile.TemporaryDirectory(prefix="a3c-killstorm-") as tmp:
        out = Path(tmp)
        while kills < args.kills:
            run = Run(args, out, runs)
            runs += 1
            ready = wait_until(
                lambda run=run: (
                    run.proc.poll() is not None
                    or (run.games() >= 2 and len(children_of(run.proc.pid, run.marker)["workers"]) >= args.n_workers)
                ),
                120,
            )
            if not ready or run.proc.poll() is not None:
                failures.append(f"run {runs}: did not start: {run.err()[-500:]}")
                run.proc.kill()
                run.finish()
                break
            for _ in range(args.kills_per_run):
                if kills >= args.kills:
                    break
                time.sleep(rng.uniform(0.0, args.max_delay))
                if run.proc.poll() is not None:
                    break
                kinds = children_of(run.proc.pid, run.marker)
                target = args.target
                if target == "all":
                    target = rng.choice([k for k in ("workers", "evaluator", "forkserver") if kinds[k]] or ["workers"])
                if target == "forkserver" and not kinds["forkserver"]:
                    target = "workers"  # the server was killed and nothing has been spawned since: make it needed
                if not kinds[target]:
                    continue
                victim = rng.choice(kinds[target])
                deaths_before = run.err().count(" died (")
                games_before = run.games()
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                kills += 1
                counts[target] += 1

                def went_on(run=run, target=target, deaths_before=deaths_before, games_before=games_before) -> bool:
                    """The trainer reported the death (a dead fork server is nobody's death) and games keep coming;
                    a worker not replaced shows as games that stop once the others are killed too."""
                    if run.proc.poll() is not None:
                        return True
                    reported = target == "forkserver" or run.err().count(" died (") > deaths_before
                    return reported and run.games() > games_before

                if not wait_until(went_on, args.patience):
                    hangs += 1
                    failures.append(f"run {runs}: {target} pid {victim} killed: no progress in {args.patience:g} s")
                    if args.dump_stacks:
                        dump_stacks(run, out / f"hang-run{runs}.txt")
                    break
                if target == "forkserver":
                    # Its workers live on, re-parented: none of them may be taken for dead, nor doubled.
                    time.sleep(FALSE_DEATH_WAIT_S)
                    if run.err().count(" died (") > deaths_before:
                        false_deaths += 1
                        failures.append(f"run {runs}: the fork server was killed and the trainer reported deaths")
                    if not all(Path(f"/proc/{pid}").exists() for pid in kinds["workers"]):
                        failures.append(f"run {runs}: a worker died with its fork server")
                if run.proc.poll() is not None:
                    break
            # Ctrl-C, unless the run already ended (by the death rule) or hung.
            if run.proc.poll() is None:
                sent = time.monotonic()
                run.proc.send_signal(signal.SIGINT)
                try:
                    run.proc.wait(timeout=CTRL_C_LIMIT_S)
                except subprocess.TimeoutExpired:
                    if not failures or f"run {runs}:" not in failures[-1]:
                        hangs += 1
                    failures.append(f"run {runs}: Ctrl-C did not end it within {CTRL_C_LIMIT_S:g} s")
                    run.proc.kill()
                    run.proc.wait()
                else:
                    took = time.monotonic() - sent
                    if "died 5 times" in run.out_text():
                        death_rule_ends += 1  # it ended by the death rule as the Ctrl-C went out
                    elif run.proc.returncode != 130:
                        failures.append(f"run {runs}: Ctrl-C gave exit status {run.proc.returncode} ({took:.1f} s)")
            else:
                status = run.proc.wait()
                if status == 1 and "died 5 times" in run.out_text():
                    death_rule_ends += 1
                else:
                    failures.append(f"run {runs}: ended with status {status}: {run.err()[-300:]}")
            run.finish()
            left = []
            if not wait_until(lambda run=run: not run_processes(run.marker), ORPHAN_GRACE_S, poll_s=0.2):
                left = list(run_processes(run.marker))
                orphans += len(left)
                failures.append(f"run {runs}: {len(left)} process(es) left: {left}")
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            try:
                load_checkpoint(run.checkpoint)
            except CheckpointError as error:
                unloadable += 1
                failures.append(f"run {runs}: {error}")
            print(
                f"run {runs}: {kills} kills so far, {hangs} hangs, {orphans} orphans, {unloadable} unloadable",
                flush=True,
            )
            if unloadable:
                break
    return {
        "target": args.target,
        "env_name": args.env_name,
        "n_workers": args.n_workers,
        "kills": kills,
        "kills_by_target": counts,
        "runs": runs,
        "ended_by_death_rule": death_rule_ends,
        "hangs": hangs,
        "false_deaths": false_deaths,
        "orphans": orphans,
        "unloadable_checkpoints": unloadable,
        "failures": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=TARGETS, default="workers")
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--kills-per-run", type=int, default=8)
    parser.add_argument("--env-name", default="CartPole-v1")
    parser.add_argument("--n-workers", type=int, default=2)
    parser.add_argument("--rs", type=int, default=5)
    parser.add_argument("--max-delay", type=float, default=1.0, help="seconds; each kill waits uniform(0, this)")
    parser.add_argument("--patience", type=float, default=20.0, help="seconds for a run to show it went on")
    parser.add_argument("--save-interval", type=float, default=1.0)
    parser.add_argument("--eval-interval", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--main-args", default="", help="more flags for main.py, as one string")
    parser.add_argument("--dump-stacks", action="store_true", help="on a hang, print py-spy's stacks of the run")
    args = parser.parse_args()
    started = time.monotonic()
    summary = storm(args)
    summary["seconds"] = round(time.monotonic() - started, 1)
    print()
    print(
        "| target | kills | runs | ended by the death rule | hangs | false deaths | orphans | unloadable checkpoints |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {summary['target']} | {summary['kills']} | {summary['runs']} | {summary['ended_by_death_rule']} | "
        f"{summary['hangs']} | {summary['false_deaths']} | {summary['orphans']} | {summary['unloadable_checkpoints']} |"
    )
    for line in summary["failures"]:
        print(f"- {line}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

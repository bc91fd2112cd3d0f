"""The parent process of a run: the model and optimizer, the fleet it drives, progress, health, checkpoints, stop."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import torch

from a3c.checkpoint import (
    FORMAT,
    STOPPED_AT_ONCE,
    VERSION,
    CheckpointError,
    damage_in,
    load_checkpoint,
    restore,
    resumed_config,
    save_checkpoint,
)
from a3c.config import Config, ConfigError, settle_lr
from a3c.envs import check_env_id, env_spaces
from a3c.fleet import Fleet
from a3c.health import LOCK_WAIT_S, Health
from a3c.learners import choose_learner
from a3c.messages import EvalResult, GameResult, WorkerFailure, WorkerStats
from a3c.metrics import Metrics, TensorBoard, read_csv
from a3c.model import build_model
from a3c.plotting import plot_training
from a3c.processes import Counts
from a3c.run_files import check_writable, claim_run_files
from a3c.shared_optim import make_optimizer, scheduled_lr

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
INTERRUPTED = "interrupted (Ctrl-C)"
HEALTH_INTERVAL_S = 5.0  # how often the model's weights and statistics are checked (Health.check)


def plot_title(env_name: str, n_workers: int, opt: str) -> str:
    return f"A3C on {env_name} ({n_workers} workers, {opt})"


def check_device(device: str) -> None:
    """Fail before training if this torch cannot put a tensor on the device."""
    try:
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError) as error:  # torch raises AssertionError for a build without CUDA
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"--device {device} is not usable here ({first}); use --device cpu") from None


class Trainer:
    """One run: the model and optimizer, the fleet of workers it is given (this machine's or a cluster's, it does not
    know which), their records, the model's health, progress, checkpoints and the stop. `run()` returns the exit
    status."""

    def __init__(self, cfg: Config, fleet: Fleet):
        check_env_id(cfg.env_name)
        cfg = settle_lr(cfg, fleet.sharing).replace(n_workers=fleet.workers)
        self.cfg, self.fleet = cfg, fleet
        check_writable(cfg.checkpoint_dir)
        check_writable(cfg.plot_dir)
        # Before anything is read or written: this run alone uses these files, and it overwrites no earlier run.
        self.run_lock = claim_run_files(cfg)
        try:
            self._build(cfg)
        except BaseException:
            self.run_lock.release()
            raise

    def _build(self, cfg: Config) -> None:
        payload = None
        if cfg.use_trained:
            payload = load_checkpoint(cfg.checkpoint_path)
            cfg = self.cfg = resumed_config(cfg, payload)
        torch.manual_seed(cfg.seed)  # the model's initial weights follow --seed
        self.model, self.spec = build_model(cfg, *env_spaces(cfg))
        check_device(cfg.device)
        # Decided once, here: every worker gets the resolved learner in its config.
        learner, self.learner_reason = choose_learner(cfg, self.model)
        self.cfg = cfg = cfg.replace(learner=learner)
        self.optimizer = make_optimizer(cfg, self.model.parameters())
        self.counters = {"frames": 0, "updates": 0, "skipped_updates": 0, "rollbacks": 0, "elapsed_s": 0.0}
        history = None
        if payload is not None:
            restore(payload, self.model, self.optimizer, cfg, self.spec)
            self.counters.update({k: payload["counters"].get(k, v) for k, v in self.counters.items()})
            history = payload["history"]
        self.fleet.prepare(cfg, self.model, self.optimizer, Counts(*(int(self.counters[n]) for n in Counts._fields)))
        resumed_frames = int(self.counters["frames"]) if cfg.use_trained else None
        self.metrics = Metrics(cfg.csv_path, history, resumed_frames)
        self.tensorboard = None
        if cfg.tensorboard:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.tensorboard = TensorBoard(Path(cfg.tensorboard_dir) / f"{cfg.run_name}-{stamp}")
        self.worker_stats: dict[int, WorkerStats] = {}
        self.health = Health(
            self.model, self.optimizer, self.fleet.lock, self.frames, say, int(self.counters["rollbacks"])
        )
        self.stop_reason: str | None = None
        self.exit_status = EXIT_OK
        self.start_time = time.monotonic()

    def frames(self) -> int:
        return self.fleet.counts().frames

    # -- results and progress ------------------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return self.counters["elapsed_s"] + time.monotonic() - self.start_time

    def _drain(self, timeout: float) -> None:
        """Take the fleet's records (waiting up to timeout for the first), log what became of its workers, and end
        the run when the fleet says it must."""
        report = self.fleet.poll(timeout)
        for line in report.lines:
            log.error("%s", line)
        if report.failure is not None:
            self._request_stop(report.failure, EXIT_FAILED)
        for record in report.records:
            self._take(record)

    def _take(self, record: GameResult | WorkerStats | EvalResult | WorkerFailure) -> None:
        """One record from a worker or the evaluator: into the CSV, TensorBoard or the log."""
        if isinstance(record, GameResult):
            row = self.metrics.add(record, self._elapsed())
            self._to_tensorboard(record.frames, {"game/score": row["score"], "game/avg100": row["avg100"]})
        elif isinstance(record, WorkerStats):
            self.worker_stats[record.worker] = record
            if record.losses:
                frames = self.frames()
                self.metrics.add_losses(self._elapsed(), frames, record.worker, record.losses)
                self._to_tensorboard(frames, {f"train/{k}": v for k, v in record.losses.items() if k != "updates"})
        elif isinstance(record, EvalResult):
            row = self.metrics.add_eval(self._elapsed(), record.frames, record.scores)
            log.info(
                "evaluation at %s frames: mean %.2f +- %.2f over %d games",
                f"{record.frames:,}", row["mean"], row["std"], row["games"],
            )  # fmt: skip
            self._to_tensorboard(record.frames, {"eval/mean": row["mean"], "eval/std": row["std"]})
        elif isinstance(record, WorkerFailure):
            who = "the evaluator" if record.worker < 0 else f"worker-{record.worker}"
            log.error("%s failed:\n%s", who, record.traceback.rstrip())

    def _to_tensorboard(self, frames: int, scalars: dict[str, float]) -> None:
        if self.tensorboard is not None:
            self.tensorboard.add(frames, scalars)

    def _on_ctrl_c(self, signum: int, frame: Any) -> None:
        """First Ctrl-C: stop cleanly (workers, checkpoint, plot). A second one: stop at once."""
        if self.stop_reason == INTERRUPTED:
            # Not a KeyboardInterrupt: raised here it can land in a weakref callback or a __del__, where Python
            # prints it and carries on. Leave as a kill would: saves are atomic and the workers follow their parent.
            print(f"\n{STOPPED_AT_ONCE}", file=sys.stderr, flush=True)
            os._exit(EXIT_INTERRUPTED)
        self.stop_reason = None  # Ctrl-C outranks a stop already under way, for the exit status
        self._request_stop(INTERRUPTED, EXIT_INTERRUPTED)
        # Said in a log file too: it shows the Ctrl-C was taken (two signals close together can arrive as one).
        start = "\n" if sys.stderr.isatty() else ""
        print(f"{start}a3c: stopping: saving a checkpoint (Ctrl-C again to quit at once)", file=sys.stderr, flush=True)

    def _request_stop(self, reason: str, status: int = EXIT_OK) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.exit_status = status

    def _check_stop(self, session_s: float) -> None:
        cfg, frames = self.cfg, self.frames()
        if cfg.target_reward is not None and self.metrics.games >= 100 and self.metrics.avg100 >= cfg.target_reward:
            self._request_stop(
                f"reached the target: average of the last 100 games {self.metrics.avg100:.2f} >= {cfg.target_reward:g}"
            )
        elif cfg.max_frames and frames >= cfg.max_frames:
            self._request_stop(f"reached --max-frames {cfg.max_frames:,}")
        elif cfg.max_seconds and session_s >= cfg.max_seconds:
            self._request_stop(f"reached --max-seconds {cfg.max_seconds:g}")

    # -- saving --------------------------------------------------------------------------------------------------
    def payload(self) -> dict[str, Any]:
        """Everything a resume needs, as copies (the shared tensors keep moving) of tensors and plain data (loads with
        weights_only=True)."""
        frames, updates, skipped = self.fleet.counts()
        return {
            "format": FORMAT,
            "version": VERSION,
            "env_name": self.cfg.env_name,
            "model_spec": self.spec,
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": {"name": self.cfg.opt, "state": copy.deepcopy(self.optimizer.state_dict())},
            "counters": {
                "frames": frames,
                "updates": updates,
                "skipped_updates": skipped,
                "rollbacks": self.health.rollbacks,
                "elapsed_s": self._elapsed(),
                "games": self.metrics.games,
            },
            "history": self.metrics.state(),
            "config": dataclasses.asdict(self.cfg),
        }

    def save(self) -> bool:
        """Checkpoint and plot; True if the checkpoint was written. Damaged weights are rolled back first and never
        written; the sound state saved becomes the one the next rollback returns to. What is written is checked once
        more, in the very copies written: the weights and the optimizer statistics."""
        self.fleet.pull(statistics=True)
        # Checked, rolled back, snapshotted and copied with the workers' steps held off: none lands in between.
        with self.fleet.lock(LOCK_WAIT_S) as held:
            sound = self.health.keep_or_roll_back() if held else True
            payload = self.payload()
        if not sound:
            self.fleet.push()
        damage = damage_in(payload)
        if damage is not None:
            log.error("the checkpoint to save %s; keeping the last one, %s", damage, self.cfg.checkpoint_path)
            return False
        try:
            save_checkpoint(payload, self.cfg.checkpoint_path)
        except OSError as error:
            log.error("could not save %s (%s); the previous checkpoint is untouched", self.cfg.checkpoint_path, error)
            return False
        self.plot()
        return True

    def check_health(self) -> bool:
        """True if the model and its statistics are sound; if not, they are rolled back (Health.check) and the
        workers given the sound ones."""
        self.fleet.pull(statistics=False)
        if self.health.check():
            return True
        self.fleet.push()
        return False

    def plot(self) -> None:
        cfg = self.cfg
        try:
            plot_training(cfg.csv_path, cfg.plot_path, plot_title(cfg.env_name, cfg.n_workers, cfg.opt))
        except Exception as error:  # noqa: BLE001 - a plot is never worth a run: matplotlib fails in many ways
            log.error("could not draw %s: %s", cfg.plot_path, error)

    # -- the loop ------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Let go of a trainer that is not run: its lock on the run's files and its fleet (run() does this itself)."""
        self.fleet.close()
        self.run_lock.release()

    def run(self) -> int:
        """Train until a stop condition; stop the workers, save, draw; return the exit status."""
        cfg = self.cfg
        previous_term = signal.signal(signal.SIGTERM, lambda *_: self._request_stop("SIGTERM"))
        previous_int = signal.signal(signal.SIGINT, self._on_ctrl_c)
        try:
            self.metrics.open_csv()
            self.fleet.start()
            lr_schedule = ""
            if cfg.lr_end is not None:
                lr_schedule = f" -> {cfg.lr_end:g} from {cfg.lr_anneal_start:,} to {cfg.lr_anneal_frames:,} frames"
            print(
                f"a3c: training {cfg.env_name} with {cfg.n_workers} worker(s) x {cfg.envs_per_worker} env(s), "
                f"--opt {cfg.opt} --lr {cfg.lr:g}{lr_schedule}, --learner {cfg.learner} ({self.learner_reason}); "
                f"checkpoint {cfg.checkpoint_path}, plot {cfg.plot_path}",
                flush=True,
            )
            self._loop()
        finally:
            signal.signal(signal.SIGTERM, previous_term)
            # A second Ctrl-C during shutdown stops at once; the checkpoint on disk is the last complete one.
            saved = self._shut_down()
            signal.signal(signal.SIGINT, previous_int)
        games = (
            f"{self.metrics.games} games, average of last 100 {self.metrics.avg100:.2f}, best {self.metrics.best_avg:.2f}"
            if self.metrics.games
            else "no game finished yet"
        )
        where = (
            f"Saved {cfg.checkpoint_path} and {cfg.plot_path}" if saved else f"{cfg.checkpoint_path} is the last save"
        )
        print(f"a3c: stopped: {self.stop_reason}. {self.frames():,} frames, {games}. {where}", flush=True)
        return self.exit_status

    def _loop(self) -> None:
        """Take records, watch the workers and the model, save, and show progress until a stop condition."""
        cfg = self.cfg
        tty = sys.stdout.isatty()
        session_start = time.monotonic()
        last_save = last_print = last_health = session_start
        rate_window: deque[tuple[float, int]] = deque([(session_start, self.frames())])
        while self.stop_reason is None:
            self._drain(timeout=0.25)
            now = time.monotonic()
            _, updates, skipped = self.fleet.counts()
            failure = self.health.skipped_too_many(now, updates, skipped) or self.health.failure
            if failure is not None:
                self._request_stop(failure, EXIT_FAILED)
            self._check_stop(now - session_start)
            if now - last_save >= cfg.save_interval_s:
                self.save()
                last_save = last_health = now
            elif now - last_health >= HEALTH_INTERVAL_S:
                self.check_health()
                last_health = now
            if now - last_print >= (1.0 if tty else 10.0):
                frames = self.frames()
                rate_window.append((now, frames))
                while len(rate_window) > 2 and now - rate_window[0][0] > 10.0:
                    rate_window.popleft()
                (t0, f0) = rate_window[0]
                fps = (frames - f0) / (now - t0) if now > t0 else 0.0
                self._to_tensorboard(frames, {"perf/frames_per_s": fps, "train/lr": scheduled_lr(cfg, frames)})
                line = self.metrics.progress_line(frames, fps, self._elapsed(), cfg.max_frames)
                print(f"\r{line}\x1b[K" if tty else line, end="" if tty else "\n", flush=True)
                last_print = now
        if tty:
            print()

    def _shut_down(self) -> bool:
        """Stop the workers, take their last records, save, close the files: each step on its own, so that no
        failure of one (a full disk under the CSV, say) costs the final checkpoint. True if the checkpoint was saved."""
        try:
            for record in self.fleet.stop():
                self._take(record)
        except Exception:  # noqa: BLE001 - logged; the save below must still happen
            log.exception("failed while stopping the workers; saving the checkpoint all the same")
        saved = self.save()
        for close in (self.metrics.close, self.tensorboard.close if self.tensorboard else None, self.fleet.close):
            if close is not None:
                with contextlib.suppress(OSError):
                    close()
        self.run_lock.release()
        return saved


def say(line: str) -> None:
    """A line for the user on stderr, as the run's own words: a3c: ..."""
    print(f"a3c: {line}", file=sys.stderr, flush=True)


def train(cfg: Config, fleet: Fleet) -> int:
    """Run a Trainer with the fleet; returns the exit status. The fleet is closed however it ends."""
    try:
        return Trainer(cfg, fleet).run()
    finally:
        fleet.close()


def redraw_plot(cfg: Config) -> int:
    """Redraw plots/<game>.png from the CSV without training."""
    if not cfg.csv_path.exists():
        raise ConfigError(f"no training data at {cfg.csv_path}: train first, or pass --plot-dir")
    title = f"A3C on {cfg.env_name}"
    if cfg.checkpoint_path.exists():
        try:  # the title names the workers and optimizer the run really used
            saved = load_checkpoint(cfg.checkpoint_path)["config"]
            title = plot_title(cfg.env_name, saved["n_workers"], saved["opt"])
        except (CheckpointError, KeyError):
            pass
    if not read_csv(cfg.csv_path).get("score"):
        raise ConfigError(f"{cfg.csv_path} holds no finished games yet; nothing to plot")
    plot_training(cfg.csv_path, cfg.plot_path, title)
    print(f"a3c: drew {cfg.plot_path}")
    return EXIT_OK

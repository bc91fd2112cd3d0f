"""The parent process: shared model and optimizer, worker processes, supervision, progress, checkpoints, stop."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.multiprocessing as mp

from a3c.checkpoint import (
    FORMAT,
    NETWORK_FIELDS,
    STOPPED_AT_ONCE,
    VERSION,
    CheckpointError,
    check_compatible,
    load_checkpoint,
    save_checkpoint,
    trained_network,
)
from a3c.config import Config, ConfigError
from a3c.envs import check_env_id, env_spaces
from a3c.evaluate import run_evaluator
from a3c.learners import choose_learner
from a3c.messages import EvalResult, GameResult, WorkerFailure, WorkerStats
from a3c.metrics import Metrics, TensorBoard, format_duration, read_csv
from a3c.model import build_model
from a3c.plotting import plot_training
from a3c.processes import SharedState
from a3c.shared_optim import apply_settings, find_damage, make_optimizer, scheduled_lr, statistics
from a3c.worker import Worker, run_worker

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
MAX_WORKER_DEATHS = 5  # deaths of one rank within DEATH_WINDOW_S that end the run
DEATH_WINDOW_S = 600.0
INTERRUPTED = "interrupted (Ctrl-C)"
SKIP_WINDOW_S = 30.0  # non-finite updates: more skipped than applied in this window, and at least
MIN_SKIPPED_TO_STOP = 20  # this many, end the run
HEALTH_INTERVAL_S = 5.0  # how often the shared weights and statistics are checked (shared_optim.find_damage)
MAX_ROLLBACKS = 3  # rollbacks within ROLLBACK_WINDOW_S that end the run: the damage keeps coming back
ROLLBACK_WINDOW_S = 600.0
TRAINER_RANK = -2  # who holds the step lock during a rollback
LOCK_WAIT_S = 30.0  # the longest the trainer waits for the step lock before it tries again later


class Snapshot(NamedTuple):
    """The shared weights and optimizer statistics at a moment they were sound, and the frame count then."""

    frames: int
    tensors: list[torch.Tensor]


def plot_title(env_name: str, n_workers: int, opt: str) -> str:
    return f"A3C on {env_name} ({n_workers} workers, {opt})"


def check_writable(directory: str | Path) -> None:
    """Fail before training if checkpoints or plots could not be written there."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"cannot write to {directory} ({error.strerror or error}); choose another directory"
        ) from None


def check_device(device: str) -> None:
    """Fail before training if this torch cannot put a tensor on the device."""
    try:
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError) as error:  # torch raises AssertionError for a build without CUDA
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"--device {device} is not usable here ({first}); use --device cpu") from None


def count_death(deaths: dict[int, deque[float]], rank: int, now: float) -> int:
    """Record a death of rank at time now; return its deaths within the last DEATH_WINDOW_S (this one included)."""
    times = deaths.setdefault(rank, deque())
    times.append(now)
    while now - times[0] > DEATH_WINDOW_S:
        times.popleft()
    return len(times)


class Trainer:
    """Owns the shared state and the workers for one run; `run()` returns the process exit status."""

    def __init__(self, cfg: Config):
        check_env_id(cfg.env_name)
        cfg = cfg.replace(n_workers=1) if cfg.serial else cfg
        self.cfg = cfg
        check_writable(cfg.checkpoint_dir)
        check_writable(cfg.plot_dir)
        payload = None
        if cfg.use_trained:
            payload = load_checkpoint(cfg.checkpoint_path)
            cfg = self.cfg = self._trained_network(cfg, payload)
        torch.manual_seed(cfg.seed)  # the shared model's initial weights follow --seed
        self.model, self.spec = build_model(cfg, *env_spaces(cfg))
        check_device(cfg.device)
        # Decided once, here: every worker gets the resolved learner in its config.
        learner, self.learner_reason = choose_learner(cfg, self.model)
        self.cfg = cfg = cfg.replace(learner=learner)
        self.optimizer = make_optimizer(cfg, self.model.parameters())
        self.counters = {"frames": 0, "updates": 0, "skipped_updates": 0, "rollbacks": 0, "elapsed_s": 0.0}
        history = None
        if payload is not None:
            history = self._resume(payload)
        self.model.share_memory()
        # Children are forked from a fork server that has imported the worker's modules once (torch above all):
        # their pages stay shared, so a worker's own memory is what it allocates, not a fresh copy of torch each
        # (docs/benchmarks.md has the figures), and 16 workers start without 16 imports of torch. The server is a
        # fresh process, started before any thread or CUDA context of this one, so forking from it is safe.
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(["a3c.worker", "a3c.evaluate"])
        # The fork server inherits this before numpy loads: its OpenBLAS (the LSTM step's product) would otherwise
        # start a thread per core in every worker, on cores the other workers already use.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        self.shared = SharedState.create(
            self.ctx,
            self.model,
            self.optimizer,
            frames=int(self.counters["frames"]),
            updates=int(self.counters["updates"]),
            skipped_updates=int(self.counters["skipped_updates"]),
        )
        resumed_frames = int(self.counters["frames"]) if cfg.use_trained else None
        self.metrics = Metrics(cfg.csv_path, history, resumed_frames)
        self.tensorboard = None
        if cfg.tensorboard:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.tensorboard = TensorBoard(Path(cfg.tensorboard_dir) / f"{cfg.run_name}-{stamp}")
        self.processes: dict[int, Any] = {}
        self.evaluator: Any = None
        self.worker_stats: dict[int, WorkerStats] = {}
        self.deaths: dict[int, deque[float]] = {}
        self.update_window: deque[tuple[float, int, int]] = deque()  # (time, updates, skipped updates)
        self.rollback_times: deque[float] = deque()
        self.damage_seen: list[tuple[int, str]] = []  # (frames, what) of each rollback in this session
        self.snapshot = self._take_snapshot()
        self.stop_reason: str | None = None
        self.exit_status = EXIT_OK
        self.start_time = time.monotonic()

    @staticmethod
    def _trained_network(cfg: Config, payload: dict[str, Any]) -> Config:
        """A resumed run goes on with the network and frames it was trained with: a checkpoint from before the
        default recipe changed resumes as it was saved. Where this run's settings (flags, config file or defaults)
        asked for something else, the log names both; an lr that differs from the saved one is named too, as this
        run's lr is the one used."""
        trained = trained_network(cfg, payload)
        changed = [
            f"{name} {getattr(trained, name)} (asked {getattr(cfg, name)})"
            for name in NETWORK_FIELDS
            if getattr(trained, name) != getattr(cfg, name)
        ]
        if changed:
            log.warning("resuming with the checkpoint's network settings: %s", ", ".join(changed))
        saved_lr = payload.get("config", {}).get("lr")
        if saved_lr is not None and saved_lr != cfg.lr:
            log.warning(
                "resuming at lr %g; the checkpoint was trained at %g (give --lr %g to keep it)",
                cfg.lr,
                saved_lr,
                saved_lr,
            )
        return trained

    def _resume(self, payload: dict[str, Any]) -> dict[str, list] | None:
        cfg = self.cfg
        check_compatible(payload, cfg.env_name, self.spec, cfg.checkpoint_path)
        try:
            self.model.load_state_dict(payload["model"])
        except RuntimeError as error:
            details = " ".join(line.strip() for line in str(error).splitlines()[1:])[:400]
            raise CheckpointError(
                f"{cfg.checkpoint_path} does not fit this network ({details}); "
                "use the settings it was trained with or another --checkpoint-dir"
            ) from None
        saved_opt = payload["optimizer"]
        if saved_opt.get("name") == cfg.opt:
            self.optimizer.load_state_dict(saved_opt["state"])
            apply_settings(self.optimizer, cfg)
            self.optimizer.share_memory()  # load_state_dict made fresh, private tensors
        else:
            log.warning("checkpoint used --opt %s; starting fresh %s statistics", saved_opt.get("name"), cfg.opt)
        self.counters.update({k: payload["counters"].get(k, v) for k, v in self.counters.items()})
        log.info(
            "resumed %s: %s frames, %d games, %s trained",
            cfg.checkpoint_path,
            f"{int(self.counters['frames']):,}",
            len(payload["history"]["columns"][0]),
            format_duration(self.counters["elapsed_s"]),
        )
        return payload["history"]

    # -- workers -------------------------------------------------------------------------------------------------
    def _start_workers(self) -> None:
        for rank in range(self.cfg.n_workers):
            self._spawn(rank)

    def _spawn(self, rank: int) -> None:
        process = self.ctx.Process(
            target=run_worker, args=(rank, self.cfg, self.shared), name=f"worker-{rank}", daemon=True
        )
        process.start()
        self.processes[rank] = process

    def _check_workers(self) -> None:
        """Replace dead workers; end the run if one keeps dying."""
        for rank, process in list(self.processes.items()):
            if process.is_alive() or self.shared.stop.is_set():
                continue
            process.join()
            deaths = count_death(self.deaths, rank, time.monotonic())
            log.error("worker-%d died (exit code %s)", rank, process.exitcode)
            if self.shared.step_lock.release_for(rank):
                log.error("worker-%d died inside the optimizer's step; released the step lock for the others", rank)
            if deaths >= MAX_WORKER_DEATHS:
                self._request_stop(
                    f"worker-{rank} died {deaths} times in {DEATH_WINDOW_S / 60:.0f} minutes", EXIT_FAILED
                )
                return
            self._spawn(rank)

    def _spawn_evaluator(self) -> None:
        self.evaluator = self.ctx.Process(
            target=run_evaluator, args=(self.cfg, self.shared), name="evaluator", daemon=True
        )
        self.evaluator.start()

    def _stop_workers(self) -> None:
        self.shared.stop.set()
        processes = list(self.processes.values()) + ([self.evaluator] if self.evaluator is not None else [])
        deadline = time.monotonic() + 10.0
        while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
            self._drain(timeout=0.1)  # a worker cannot exit while its queue feeder holds unread records
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join(timeout=5.0)
            if process.is_alive():
                process.kill()
                process.join()
        for rank in self.processes:  # a worker terminated inside its step must not hold the lock from the last save
            self.shared.step_lock.release_for(rank)
        self._drain(timeout=0.0)

    # -- results and progress ------------------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return self.counters["elapsed_s"] + time.monotonic() - self.start_time

    def _drain(self, timeout: float) -> None:
        """Take every record waiting on the results queue (waiting up to timeout for the first)."""
        block = timeout > 0
        while True:
            try:
                record = self.shared.results.get(block, timeout) if block else self.shared.results.get_nowait()
            except queue.Empty:
                return
            block = False
            self._take(record)

    def _take(self, record: GameResult | WorkerStats | EvalResult | WorkerFailure) -> None:
        """One record from a worker or the evaluator: into the CSV, TensorBoard or the log."""
        if isinstance(record, GameResult):
            row = self.metrics.add(record, self._elapsed())
            self._to_tensorboard(record.frames, {"game/score": row["score"], "game/avg100": row["avg100"]})
        elif isinstance(record, WorkerStats):
            self.worker_stats[record.worker] = record
            if record.losses:
                frames = int(self.shared.frames.value)
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

    def _check_skipped(self, now: float) -> None:
        """End the run when most recent updates came out non-finite: the model would only stand still. Unless the
        shared weights are what is damaged: then every worker's loss is non-finite until a rollback, so roll back
        now (check_health) and count afresh, whenever the health check would otherwise have come."""
        updates, skipped = self.shared.updates.value, self.shared.skipped_updates.value
        window = self.update_window
        window.append((now, updates, skipped))
        while now - window[0][0] > SKIP_WINDOW_S:
            window.popleft()
        _, updates_then, skipped_then = window[0]
        new_skipped, applied = skipped - skipped_then, updates - updates_then
        if new_skipped >= MIN_SKIPPED_TO_STOP and new_skipped > applied:
            if not self.check_health():
                window.clear()
                return
            self._request_stop(
                f"{new_skipped} of the last {new_skipped + applied} updates had a non-finite loss or gradient and were "
                "skipped; the model holds the last good weights (try a lower --lr or --max-grad-norm)",
                EXIT_FAILED,
            )

    def _check_stop(self, session_s: float) -> None:
        cfg, frames = self.cfg, self.shared.frames.value
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
        """Everything a resume needs, as tensors and plain data (loads with weights_only=True)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "env_name": self.cfg.env_name,
            "model_spec": self.spec,
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": {"name": self.cfg.opt, "state": self.optimizer.state_dict()},
            "counters": {
                "frames": int(self.shared.frames.value),
                "updates": int(self.shared.updates.value),
                "skipped_updates": int(self.shared.skipped_updates.value),
                "rollbacks": self.rollbacks,
                "elapsed_s": self._elapsed(),
                "games": self.metrics.games,
            },
            "history": self.metrics.state(),
            "config": dataclasses.asdict(self.cfg),
        }

    def save(self) -> None:
        """Checkpoint and plot. Damaged weights are rolled back first and never written; the sound state saved
        becomes the one the next rollback returns to."""
        # Checked, and copied or rolled back, under the step lock: no step lands between the check and the copy.
        with self._step_lock_held() as held:
            if held:
                damage = find_damage(self.model, self.optimizer)
                if damage is None:
                    self.snapshot = self._take_snapshot()
                else:
                    self._roll_back(damage)
        payload = self.payload()
        if not all(torch.isfinite(weights).all() for weights in payload["model"].values()):
            log.error(
                "the weights turned non-finite while saving; keeping the last checkpoint %s", self.cfg.checkpoint_path
            )
            return
        try:
            save_checkpoint(payload, self.cfg.checkpoint_path)
        except OSError as error:
            log.error("could not save %s (%s); the previous checkpoint is untouched", self.cfg.checkpoint_path, error)
            return
        self.plot()

    # -- damaged weights -----------------------------------------------------------------------------------------
    def _shared_tensors(self) -> list[torch.Tensor]:
        """The shared weights and every optimizer statistic (step counts too), in a fixed order."""
        return [p.detach() for p in self.model.parameters()] + statistics(self.optimizer)

    def _step_lock_held(self) -> contextlib.AbstractContextManager[bool]:
        """The step lock for the trainer, waiting at most LOCK_WAIT_S and freeing it from a dead worker meanwhile."""
        give_up_at = time.monotonic() + LOCK_WAIT_S

        def keep_waiting() -> bool:
            holder = self.shared.step_lock.holder.value
            process = self.processes.get(holder)
            if process is not None and not process.is_alive():
                self.shared.step_lock.release_for(holder)
            return time.monotonic() < give_up_at

        return self.shared.step_lock.held_by(TRAINER_RANK, keep_waiting)

    def _take_snapshot(self) -> Snapshot:
        return Snapshot(int(self.shared.frames.value), [t.clone() for t in self._shared_tensors()])

    def check_health(self) -> bool:
        """True if the shared weights and statistics are sound; if not, roll them back (_roll_back).

        The first look goes without the lock, so it may read a step half-way. Damage is confirmed under the lock,
        with no step under way (with --lock-step, the default), and only then rolled back; what the first look saw
        is kept in the message when the two differ (a damaged statistic beside sound weights is not what a bad
        step leaves)."""
        seen = find_damage(self.model, self.optimizer)
        if seen is None:
            return True
        with self._step_lock_held() as held:
            if not held:
                log.error("%s, but the step lock stayed taken for %.0f s; trying again later", seen, LOCK_WAIT_S)
                return False
            damage = find_damage(self.model, self.optimizer)
            if damage is None:
                log.warning(
                    "a look without the step lock saw %s; under the lock all is sound: nothing rolled back", seen
                )
                return True
            self._roll_back(damage if damage == seen else f"{damage} (first seen without the lock: {seen})")
        return False

    def _roll_back(self, damage: str) -> None:
        """With the step lock held: put back the last sound snapshot, say so in one line, and go on; end the run
        (status 1) when that keeps happening."""
        with torch.no_grad():
            for tensor, saved in zip(self._shared_tensors(), self.snapshot.tensors, strict=True):
                tensor.copy_(saved)
        now = time.monotonic()
        self.rollback_times.append(now)
        while now - self.rollback_times[0] > ROLLBACK_WINDOW_S:
            self.rollback_times.popleft()
        frames = int(self.shared.frames.value)
        self.damage_seen.append((frames, damage))
        print(
            f"a3c: {damage} at {frames:,} frames; rolled back to the weights and optimizer statistics of "
            f"{self.snapshot.frames:,} frames and going on (rollback {self.rollbacks})",
            file=sys.stderr,
            flush=True,
        )
        if len(self.rollback_times) >= MAX_ROLLBACKS:
            self._request_stop(
                f"the shared model was damaged {len(self.rollback_times)} times in {ROLLBACK_WINDOW_S / 60:.0f} "
                f"minutes ({damage}); it holds the weights of {self.snapshot.frames:,} frames (try a lower --lr)",
                EXIT_FAILED,
            )

    @property
    def rollbacks(self) -> int:
        """Rollbacks over the whole run, resumes included."""
        return int(self.counters["rollbacks"]) + len(self.damage_seen)

    def plot(self) -> None:
        cfg = self.cfg
        try:
            plot_training(cfg.csv_path, cfg.plot_path, plot_title(cfg.env_name, cfg.n_workers, cfg.opt))
        except (OSError, ValueError) as error:
            log.error("could not draw %s: %s", cfg.plot_path, error)

    # -- the loop ------------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Train until a stop condition; save, draw, join every worker; return the exit status."""
        cfg = self.cfg
        previous_term = signal.signal(signal.SIGTERM, lambda *_: self._request_stop("SIGTERM"))
        previous_int = signal.signal(signal.SIGINT, self._on_ctrl_c)
        self.metrics.open_csv()
        tty = sys.stdout.isatty()
        session_start = time.monotonic()
        last_save = last_print = last_health = session_start
        rate_window: deque[tuple[float, int]] = deque([(session_start, self.shared.frames.value)])
        serial_worker = None
        try:
            if cfg.serial:
                serial_worker = Worker(0, cfg, self.shared)
            else:
                self._start_workers()
            if cfg.eval_interval_s > 0:
                self._spawn_evaluator()
            lr_schedule = ""
            if cfg.lr_end is not None:
                lr_schedule = f" -> {cfg.lr_end:g} from {cfg.lr_anneal_start:,} to {cfg.lr_anneal_frames:,} frames"
            print(
                f"a3c: training {cfg.env_name} with {cfg.n_workers} worker(s) x {cfg.envs_per_worker} env(s), "
                f"--opt {cfg.opt} --lr {cfg.lr:g}{lr_schedule}, --learner {cfg.learner} ({self.learner_reason}); "
                f"checkpoint {cfg.checkpoint_path}, plot {cfg.plot_path}",
                flush=True,
            )
            while self.stop_reason is None:
                if serial_worker is not None:
                    serial_worker.train_step()
                    self._drain(timeout=0.0)
                else:
                    self._drain(timeout=0.25)
                    self._check_workers()
                now = time.monotonic()
                self._check_skipped(now)
                self._check_stop(now - session_start)
                if now - last_save >= cfg.save_interval_s:
                    self.save()
                    last_save = last_health = now
                elif now - last_health >= HEALTH_INTERVAL_S:
                    self.check_health()
                    last_health = now
                if now - last_print >= (1.0 if tty else 10.0):
                    frames = self.shared.frames.value
                    rate_window.append((now, frames))
                    while len(rate_window) > 2 and now - rate_window[0][0] > 10.0:
                        rate_window.popleft()
                    (t0, f0) = rate_window[0]
                    fps = (frames - f0) / (now - t0) if now > t0 else 0.0
                    lr = scheduled_lr(cfg, frames)
                    self._to_tensorboard(frames, {"perf/frames_per_s": fps, "train/lr": lr})
                    line = self.metrics.progress_line(frames, fps, self._elapsed(), cfg.max_frames)
                    print(f"\r{line}\x1b[K" if tty else line, end="" if tty else "\n", flush=True)
                    last_print = now
        finally:
            signal.signal(signal.SIGTERM, previous_term)
            if tty:
                print()
            # A second Ctrl-C during shutdown stops at once; the checkpoint on disk is the last complete one.
            if serial_worker is not None:
                serial_worker.close()
            self._stop_workers()
            self.save()
            self.metrics.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
            signal.signal(signal.SIGINT, previous_int)
        games = (
            f"{self.metrics.games} games, average of last 100 {self.metrics.avg100:.2f}, best {self.metrics.best_avg:.2f}"
            if self.metrics.games
            else "no game finished yet"
        )
        print(
            f"a3c: stopped: {self.stop_reason}. {int(self.shared.frames.value):,} frames, {games}. "
            f"Saved {cfg.checkpoint_path} and {cfg.plot_path}",
            flush=True,
        )
        return self.exit_status


def train(cfg: Config) -> int:
    """Build a Trainer and run it; returns the exit status."""
    return Trainer(cfg).run()


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

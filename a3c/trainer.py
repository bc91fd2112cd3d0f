"""The parent process: shared model and optimizer, worker processes, supervision, progress, checkpoints, stop."""

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
from typing import Any, NamedTuple

import torch

from a3c.checkpoint import (
    FORMAT,
    NETWORK_FIELDS,
    STOPPED_AT_ONCE,
    VERSION,
    CheckpointError,
    check_compatible,
    damage_in,
    load_checkpoint,
    save_checkpoint,
    trained_network,
)
from a3c.config import Config, ConfigError
from a3c.envs import check_env_id, env_spaces
from a3c.fleet import DEATH_WINDOW_S, WorkerGroup, share_state
from a3c.learners import choose_learner
from a3c.messages import EvalResult, GameResult, WorkerFailure, WorkerStats
from a3c.metrics import Metrics, TensorBoard, format_duration, read_csv
from a3c.model import build_model
from a3c.plotting import plot_training
from a3c.processes import EVALUATOR_RANK, Counts, LocalOutbox
from a3c.run_files import claim_run_files
from a3c.shared_optim import apply_settings, find_damage, make_optimizer, scheduled_lr, statistics
from a3c.worker import Worker

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
INTERRUPTED = "interrupted (Ctrl-C)"
SKIP_WINDOW_S = 30.0  # non-finite updates: more skipped than applied in this window, and at least
MIN_SKIPPED_TO_STOP = 20  # this many, end the run
HEALTH_INTERVAL_S = 5.0  # how often the shared weights and statistics are checked (shared_optim.find_damage)
MAX_ROLLBACKS = 3  # rollbacks within ROLLBACK_WINDOW_S that end the run: the damage keeps coming back
ROLLBACK_WINDOW_S = 600.0
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


class Trainer:
    """Owns the shared state and the workers for one run; `run()` returns the process exit status."""

    def __init__(self, cfg: Config):
        check_env_id(cfg.env_name)
        cfg = cfg.replace(n_workers=1) if cfg.serial else cfg
        self.cfg = cfg
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
        start = Counts(*(int(self.counters[name]) for name in Counts._fields))
        self.shared = share_state(self.model, self.optimizer, max_rank=cfg.n_workers - 1, start=start)
        ranks = [] if cfg.serial else list(range(cfg.n_workers))
        self.group = WorkerGroup(cfg, self.shared, ranks, evaluator=cfg.eval_interval_s > 0)
        self.outbox = LocalOutbox()  # the records of the serial worker, which runs in this process
        resumed_frames = int(self.counters["frames"]) if cfg.use_trained else None
        self.metrics = Metrics(cfg.csv_path, history, resumed_frames)
        self.tensorboard = None
        if cfg.tensorboard:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.tensorboard = TensorBoard(Path(cfg.tensorboard_dir) / f"{cfg.run_name}-{stamp}")
        self.worker_stats: dict[int, WorkerStats] = {}
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

    # -- results and progress ------------------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return self.counters["elapsed_s"] + time.monotonic() - self.start_time

    def _drain(self, timeout: float) -> None:
        """Take the children's records (waiting up to timeout for the first) and the serial worker's; log what became
        of the children. A worker that keeps dying ends the run; an evaluator that does is left out."""
        report = self.group.poll(timeout)
        for line in report.lines:
            log.error("%s", line)
        for rank in report.gave_up:
            if rank != EVALUATOR_RANK:
                self._request_stop(
                    f"worker-{rank} died {len(self.group.deaths[rank])} times in {DEATH_WINDOW_S / 60:.0f} minutes",
                    EXIT_FAILED,
                )
        for record in report.records:
            self._take(record)
        while self.outbox.records:
            self._take(self.outbox.records.popleft())

    def _take(self, record: GameResult | WorkerStats | EvalResult | WorkerFailure) -> None:
        """One record from a worker or the evaluator: into the CSV, TensorBoard or the log."""
        if isinstance(record, GameResult):
            row = self.metrics.add(record, self._elapsed())
            self._to_tensorboard(record.frames, {"game/score": row["score"], "game/avg100": row["avg100"]})
        elif isinstance(record, WorkerStats):
            self.worker_stats[record.worker] = record
            if record.losses:
                frames = self.shared.counters.frames()
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
        _, updates, skipped = self.shared.counters.totals()
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
        cfg, frames = self.cfg, self.shared.counters.frames()
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
        frames, updates, skipped = self.shared.counters.totals()
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
                "rollbacks": self.rollbacks,
                "elapsed_s": self._elapsed(),
                "games": self.metrics.games,
            },
            "history": self.metrics.state(),
            "config": dataclasses.asdict(self.cfg),
        }

    def save(self) -> bool:
        """Checkpoint and plot; True if the checkpoint was written. Damaged weights are rolled back first and never written; the sound state saved
        becomes the one the next rollback returns to. What is written is checked once more, in the very copies
        written: the weights and the optimizer statistics."""
        # Checked, rolled back, snapshotted and copied under the step lock: no step lands in between.
        with self.shared.step_lock.held(LOCK_WAIT_S) as held:
            if held:
                damage = find_damage(self.model, self.optimizer)
                if damage is None:
                    self.snapshot = self._take_snapshot()
                else:
                    self._roll_back(damage)
            payload = self.payload()
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

    # -- damaged weights -----------------------------------------------------------------------------------------
    def _shared_tensors(self) -> list[torch.Tensor]:
        """The shared weights and every optimizer statistic (step counts too), in a fixed order."""
        return [p.detach() for p in self.model.parameters()] + statistics(self.optimizer)

    def _take_snapshot(self) -> Snapshot:
        return Snapshot(self.shared.counters.frames(), [t.clone() for t in self._shared_tensors()])

    def check_health(self) -> bool:
        """True if the shared weights and statistics are sound; if not, roll them back (_roll_back).

        The first look goes without the lock, so it may read a step half-way. Damage is confirmed under the lock,
        with no step under way (with --lock-step, the default), and only then rolled back; what the first look saw
        is kept in the message when the two differ (a damaged statistic beside sound weights is not what a bad
        step leaves)."""
        seen = find_damage(self.model, self.optimizer)
        if seen is None:
            return True
        with self.shared.step_lock.held(LOCK_WAIT_S) as held:
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
        frames = self.shared.counters.frames()
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
        except Exception as error:  # noqa: BLE001 - a plot is never worth a run: matplotlib fails in many ways
            log.error("could not draw %s: %s", cfg.plot_path, error)

    # -- the loop ------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Let go of a trainer that is not run: its lock on the run's files and its shared state (run() does this
        itself)."""
        self.shared.close()
        self.run_lock.release()

    def run(self) -> int:
        """Train until a stop condition; stop the children, save, draw; return the exit status."""
        cfg = self.cfg
        previous_term = signal.signal(signal.SIGTERM, lambda *_: self._request_stop("SIGTERM"))
        previous_int = signal.signal(signal.SIGINT, self._on_ctrl_c)
        serial_worker = None
        try:
            self.metrics.open_csv()
            if cfg.serial:
                serial_worker = Worker(0, cfg, self.shared, self.outbox)
            self._start_fleet()
            lr_schedule = ""
            if cfg.lr_end is not None:
                lr_schedule = f" -> {cfg.lr_end:g} from {cfg.lr_anneal_start:,} to {cfg.lr_anneal_frames:,} frames"
            print(
                f"a3c: training {cfg.env_name} with {cfg.n_workers} worker(s) x {cfg.envs_per_worker} env(s), "
                f"--opt {cfg.opt} --lr {cfg.lr:g}{lr_schedule}, --learner {cfg.learner} ({self.learner_reason}); "
                f"checkpoint {cfg.checkpoint_path}, plot {cfg.plot_path}",
                flush=True,
            )
            self._loop(serial_worker)
        finally:
            signal.signal(signal.SIGTERM, previous_term)
            # A second Ctrl-C during shutdown stops at once; the checkpoint on disk is the last complete one.
            saved = self._shut_down(serial_worker)
            signal.signal(signal.SIGINT, previous_int)
        games = (
            f"{self.metrics.games} games, average of last 100 {self.metrics.avg100:.2f}, best {self.metrics.best_avg:.2f}"
            if self.metrics.games
            else "no game finished yet"
        )
        where = (
            f"Saved {cfg.checkpoint_path} and {cfg.plot_path}" if saved else f"{cfg.checkpoint_path} is the last save"
        )
        print(
            f"a3c: stopped: {self.stop_reason}. {self.shared.counters.frames():,} frames, {games}. {where}", flush=True
        )
        return self.exit_status

    def _loop(self, serial_worker: Worker | None) -> None:
        """Take records, watch the children and the shared model, save, and show progress until a stop condition."""
        cfg = self.cfg
        tty = sys.stdout.isatty()
        session_start = time.monotonic()
        last_save = last_print = last_health = session_start
        rate_window: deque[tuple[float, int]] = deque([(session_start, self.shared.counters.frames())])
        while self.stop_reason is None:
            if serial_worker is not None:
                serial_worker.train_step()
                self._drain(timeout=0.0)
            else:
                self._drain(timeout=0.25)
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
                frames = self.shared.counters.frames()
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

    def _start_fleet(self) -> None:
        self.group.start()

    def _stop_fleet(self) -> None:
        for record in self.group.stop():
            self._take(record)

    def _shut_down(self, serial_worker: Worker | None) -> bool:
        """Stop the children, take their last records, save, close the files: each step on its own, so that no
        failure of one (a full disk under the CSV, say) costs the final checkpoint. True if the checkpoint was saved."""
        steps = [
            ("stopping the workers", self._stop_fleet),
            ("closing the serial worker", serial_worker.close if serial_worker is not None else None),
            ("taking the last records", lambda: self._drain(timeout=0.0)),
        ]
        for what, step in steps:
            if step is None:
                continue
            try:
                step()
            except Exception:  # noqa: BLE001 - logged; the save below must still happen
                log.exception("failed while %s; saving the checkpoint all the same", what)
        saved = self.save()
        for close in (self.metrics.close, self.tensorboard.close if self.tensorboard else None, self.shared.close):
            if close is not None:
                with contextlib.suppress(OSError):
                    close()
        self.run_lock.release()
        return saved


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

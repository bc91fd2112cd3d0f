"""Game results, the running average, the per-game CSV and the progress line. The only writer of metric files."""

from __future__ import annotations

import csv
import logging
import math
import os
import statistics
from collections import deque
from pathlib import Path

from a3c.config import ConfigError
from a3c.messages import GameResult

COLUMNS = ("time_s", "frames", "worker", "score", "length", "avg100")
# Beside <game>.csv: the workers' mean losses every few seconds (policy and value loss per update, i.e. summed over
# the rollout's steps; entropy per step; staleness: the shared updates between the weights a gradient was taken at
# and its step), and the evaluator's scores of whole games.
LOSS_COLUMNS = ("time_s", "frames", "worker", "policy_loss", "value_loss", "entropy", "staleness", "updates")
EVAL_COLUMNS = ("time_s", "frames", "games", "mean", "std", "min", "max")
WINDOW = 100

log = logging.getLogger(__name__)


class RowWriter:
    """Appends rows to an open CSV file, flushed at once. A row that cannot be written (a full disk) is reported
    once and dropped, never raised: the games live on in the checkpoint's history, which rewrites the CSV on resume,
    and the run's final save must not be lost to a CSV."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "a", newline="")  # noqa: SIM115 - closed by close()
        self.failed = False

    def write(self, values: list[object]) -> None:
        try:
            csv.writer(self.file).writerow(values)
            self.file.flush()
        except OSError as error:
            if not self.failed:
                log.error(
                    "could not write %s (%s); its rows are dropped from now on, the checkpoint keeps every game",
                    self.path,
                    error.strerror or error,
                )
            self.failed = True

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:  # the buffer that could not be flushed is the row already reported
            pass


def summarize(scores: list[float]) -> dict[str, float]:
    """mean, std (population), min, max and number of games of a list of whole-game scores."""
    return {
        "mean": statistics.fmean(scores),
        "std": statistics.pstdev(scores),
        "min": min(scores),
        "max": max(scores),
        "games": len(scores),
    }


def side_paths(csv_path: str | Path) -> tuple[Path, Path]:
    """The loss CSV and the evaluation CSV that go beside a run's per-game CSV."""
    csv_path = Path(csv_path)
    return csv_path.with_name(f"{csv_path.stem}-losses.csv"), csv_path.with_name(f"{csv_path.stem}-eval.csv")


class SideLog:
    """An append-only CSV of rows keyed by frames. On resume it keeps the rows the checkpoint had seen."""

    def __init__(self, path: Path, columns: tuple[str, ...]):
        self.path, self.columns = path, columns
        self._file = None

    def open(self, keep_up_to_frames: int | None) -> None:
        """Start the file afresh, or (resuming) keep its rows with frames <= keep_up_to_frames; then append."""
        kept: list[list[str]] = []
        if keep_up_to_frames is not None and self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                names = reader.fieldnames or []
                # A file written before a column was added keeps its rows, with nan in the new column. A row of
                # the wrong length (cut short by a crash mid-write) is dropped.
                if "frames" in names and set(names) <= set(self.columns):
                    kept = [
                        [row.get(c, "nan") for c in self.columns]
                        for row in reader
                        if None not in row and None not in row.values() and float(row["frames"]) <= keep_up_to_frames
                    ]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.columns)
            writer.writerows(kept)
        os.replace(tmp, self.path)
        self._file = RowWriter(self.path)

    def add(self, row: dict[str, float]) -> None:
        if self._file is not None:
            self._file.write([row[c] for c in self.columns])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorBoard:
    """Scalars for TensorBoard (torch's SummaryWriter) under log_dir; the tensorboard package is an optional extra."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "--tensorboard needs the tensorboard package: pip install 'a3c[tensorboard]' (or pip install tensorboard)"
            ) from None
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir))

    def add(self, frames: int, scalars: dict[str, float]) -> None:
        """Log each scalar at x = emulator frames."""
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, frames)

    def close(self) -> None:
        self.writer.close()


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def format_count(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return f"{n:.0f}"


class Metrics:
    """Every game of a run (continued across resumes), the average of the last 100 and the best such average."""

    def __init__(self, csv_path: str | Path, history: dict[str, list] | None = None, resumed_frames: int | None = None):
        self.csv_path = Path(csv_path)
        self.resumed_frames = resumed_frames
        loss_path, eval_path = side_paths(self.csv_path)
        self.losses = SideLog(loss_path, LOSS_COLUMNS)
        self.evals = SideLog(eval_path, EVAL_COLUMNS)
        self.rows: list[dict[str, float]] = []
        self.recent: deque[float] = deque(maxlen=WINDOW)
        self.best_avg = -math.inf
        for values in zip(*(history or {}).get("columns", []), strict=True):
            row = dict(zip(COLUMNS, values, strict=True))
            self.recent.append(row["score"])
            self._append(row)
        self._file = None

    @property
    def games(self) -> int:
        return len(self.rows)

    @property
    def avg100(self) -> float:
        return sum(self.recent) / len(self.recent) if self.recent else math.nan

    @property
    def last_score(self) -> float:
        return self.rows[-1]["score"] if self.rows else math.nan

    def _append(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        self.best_avg = max(self.best_avg, row["avg100"])

    def add(self, result: GameResult, time_s: float) -> dict[str, float]:
        """Record a game, append it to the CSV (flushed), and return its row."""
        self.recent.append(result.score)
        row = {
            "time_s": round(time_s, 3),
            "frames": result.frames,
            "worker": result.worker,
            "score": result.score,
            "length": result.length,
            "avg100": round(self.avg100, 4),
        }
        self._append(row)
        if self._file is not None:
            self._file.write([row[c] for c in COLUMNS])
        return row

    def open_csv(self) -> None:
        """Rewrite the CSV from the history (so it agrees with the checkpoint), then keep it open for appends."""
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.csv_path.with_name(self.csv_path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            writer.writerows([row[c] for c in COLUMNS] for row in self.rows)
        os.replace(tmp, self.csv_path)
        self._file = RowWriter(self.csv_path)
        self.losses.open(self.resumed_frames)
        self.evals.open(self.resumed_frames)

    def add_losses(self, time_s: float, frames: int, worker: int, losses: dict[str, float]) -> None:
        """A worker's mean policy loss, value loss and policy entropy over its last few seconds of updates."""
        self.losses.add({"time_s": round(time_s, 3), "frames": frames, "worker": worker, **losses})

    def add_eval(self, time_s: float, frames: int, scores: list[float]) -> dict[str, float]:
        """The evaluator's games on the model as it was at `frames`; returns the row."""
        stats = summarize(scores)
        row = {"time_s": round(time_s, 3), "frames": frames, **stats, "std": round(stats["std"], 4)}
        self.evals.add(row)
        return row

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.losses.close()
        self.evals.close()

    def state(self) -> dict[str, list]:
        """Plain-data history for the checkpoint (loads under weights_only)."""
        return {"names": list(COLUMNS), "columns": [[row[c] for row in self.rows] for c in COLUMNS]}

    def progress_line(self, frames: int, frames_per_s: float, elapsed_s: float, max_frames: int = 0) -> str:
        """One line: frames, frames/s, games, last score, average of 100, best, elapsed, and time left to max_frames."""
        parts = [
            f"frames {format_count(frames)}",
            f"{frames_per_s:,.0f} f/s",
            f"games {self.games}",
            f"last {self.last_score:g}" if self.rows else "last -",
            f"avg100 {self.avg100:.2f}" if self.rows else "avg100 -",
            f"best {self.best_avg:.2f}" if self.rows else "best -",
            format_duration(elapsed_s),
        ]
        if max_frames and frames_per_s > 0:
            parts.append(f"left {format_duration(max(0, max_frames - frames) / frames_per_s)}")
        return " | ".join(parts)


def read_csv(path: str | Path) -> dict[str, list[float]]:
    """The per-game CSV as columns of floats. A row cut short (a full disk, a crash mid-write) is left out."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns: dict[str, list[float]] = {name: [] for name in reader.fieldnames or []}
        for row in reader:
            try:
                values = {name: float(value) for name, value in row.items()}
            except (TypeError, ValueError):  # a missing field (None), a number cut in half, or extra fields
                continue
            for name, value in values.items():
                columns[name].append(value)
    return columns

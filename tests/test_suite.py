"""benchmarks/suite.py: a real (tiny) suite run writes its table, grid and summary, goes on where it stopped, and reads
scores at the right frames."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT, load_benchmark

from a3c.metrics import read_csv

SUITE = REPO_ROOT / "benchmarks" / "suite.py"


def test_score_at_reads_the_last_game_ended_by_each_frame_count():
    """The average after the last game ended by each mark; a mark past the end of training has none, unless the
    run stopped there solved. Training goes on after the last game ends, so a run stopped at 1,600 frames whose
    last game ended at 1,500 still has a score at 1,600."""
    suite = load_benchmark("suite")
    columns = {"frames": [400.0, 900.0, 1500.0], "avg100": [1.0, 2.0, 3.0]}
    assert suite.score_at(columns, 1000, 1600, stopped_solved=False) == (2.0, 2)
    assert suite.score_at(columns, 1600, 1600, stopped_solved=False) == (3.0, 3)
    assert suite.score_at(columns, 300, 1600, stopped_solved=False) is None  # no game had ended yet
    assert suite.score_at(columns, 2000, 1600, stopped_solved=False) is None  # training never got there
    assert suite.score_at(columns, 2000, 1600, stopped_solved=True) == (3.0, 3)  # it stopped there, solved


def test_game_names_become_noframeskip_ids():
    """Pong in any case -> PongNoFrameskip-v4; a full id stays as given."""
    suite = load_benchmark("suite")
    assert suite.env_id("pong") == suite.env_id("Pong") == "PongNoFrameskip-v4"
    assert suite.env_id("ALE/Breakout-v5") == "ALE/Breakout-v5"


def test_every_suite_game_has_random_play_and_an_anchor_curve_with_a_source():
    anchors = json.loads((REPO_ROOT / "benchmarks" / "anchors.json").read_text())["games"]
    suite = load_benchmark("suite")
    for game in suite.GAMES:
        known = anchors[game.lower()]
        assert isinstance(known["random"]["score"], float) and known["random"]["source"]
        assert known["curves"], game
        for curve in known["curves"]:
            assert curve["source"] and set(curve["scores"]) == set(suite.AT_FRAMES)


@pytest.mark.learning
@pytest.mark.multiprocess
def test_a_cartpole_suite_writes_its_table_and_grid_and_reuses_or_extends_its_run(tmp_path: Path):
    """A real suite of one tiny CartPole run: the table, the PNG grid and the summary; run again, it reads the run
    back instead of training; with a bigger budget it goes on from the checkpoint, keeping the games played; with
    other trainer flags it refuses the folder rather than mix the two runs."""
    command = [sys.executable, str(SUITE), "--games", "CartPole-v1", "--frames", "3000", "--n-workers", "1"]
    command += ["--out-dir", str(tmp_path)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    (row,) = summary["games"]
    assert row["game"] == "CartPole-v1" and row["frames"] >= 3000 and row["exit_status"] == 0
    assert "| **CartPole-v1** | a3c |" in (tmp_path / "suite.md").read_text()
    assert (tmp_path / "suite.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "CartPole-v1: reusing" in again.stdout
    assert json.loads(again.stdout.strip().splitlines()[-1])["games"][0]["frames"] == row["frames"]

    csv_path = tmp_path / "CartPole-v1" / "CartPole-v1.csv"
    first_games = read_csv(csv_path)
    longer_command = [*command, "--frames", "6000"]  # the later --frames wins
    longer = subprocess.run(longer_command, capture_output=True, text=True, timeout=300)
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert "CartPole-v1: going on from" in longer.stdout
    (longer_row,) = json.loads(longer.stdout.strip().splitlines()[-1])["games"]
    assert longer_row["frames"] >= 6000
    games = read_csv(csv_path)  # the first run's games, then more from where its frames ended
    kept = len(first_games["frames"])
    assert len(games["frames"]) > kept and games["frames"][:kept] == first_games["frames"]
    assert games["frames"][kept] > first_games["frames"][-1]

    other = subprocess.run([*command, "--lr", "5e-4"], capture_output=True, text=True, timeout=300)
    assert other.returncode != 0 and "holds a run made with other settings" in other.stderr
    summary = json.loads((tmp_path / "CartPole-v1" / "learning.json").read_text())
    assert summary["frames_trained"] == longer_row["frames"]

"""An earlier run is never overwritten by accident, and two runs never share one run's files (issue #37)."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers import HAS_PROC, assert_no_survivors, local_trainer, read_log, start_main, wait_for

from a3c import cli
from a3c.checkpoint import load_checkpoint
from a3c.config import ConfigError, build_config


def cartpole(tmp_path: Path, *extra: str) -> list[str]:
    """A short serial CartPole run's flags, writing under tmp_path."""
    return [
        "--env-name", "CartPole-v1", "--serial", "--max-frames", "600", "--seed", "3",
        "--checkpoint-dir", str(tmp_path / "ck"), "--plot-dir", str(tmp_path / "pl"), *extra,
    ]  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_run_without_use_trained_refuses_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture):
    """The same command again, without --use-trained, finds the checkpoint and CSV of the first: one line that names
    --use-trained and --start-over, exit status 2, and every file exactly as it was."""
    assert cli.main(cartpole(tmp_path)) == 0
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert cli.main(cartpole(tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hold an earlier run of CartPole-v1" in err[0], err
    assert "--use-trained" in err[0] and "--start-over" in err[0]
    assert snapshot(tmp_path) == before


def test_a_csv_alone_is_an_earlier_run_too(tmp_path: Path, capsys: pytest.CaptureFixture):
    """A CSV without a checkpoint (a run killed before its first save) is refused as well."""
    (tmp_path / "pl").mkdir()
    (tmp_path / "pl" / "CartPole-v1.csv").write_text("time_s,frames,worker,score,length,avg100\n1,20,0,20,20,20\n")
    assert cli.main(cartpole(tmp_path)) == 2
    assert "CartPole-v1.csv hold an earlier run" in capsys.readouterr().err


def test_start_over_moves_the_earlier_run_aside_whole(tmp_path: Path, capsys: pytest.CaptureFixture):
    """--start-over moves the checkpoint (and .prev), the CSVs and the plot into <dir>/CartPole-v1.<date-time>/,
    says where, and trains afresh; the run moved aside still resumes from there."""
    assert cli.main(cartpole(tmp_path)) == 0
    first = load_checkpoint(tmp_path / "ck" / "CartPole-v1.pt")
    capsys.readouterr()
    assert cli.main(cartpole(tmp_path, "--start-over", "--max-frames", "300")) == 0
    out = capsys.readouterr().out
    assert "--start-over: moved the earlier run of CartPole-v1 aside to" in out
    [aside_ck] = [p for p in (tmp_path / "ck").iterdir() if p.is_dir()]
    [aside_pl] = [p for p in (tmp_path / "pl").iterdir() if p.is_dir()]
    assert aside_ck.name.startswith("CartPole-v1.") and str(aside_ck) in out
    assert (aside_ck / "CartPole-v1.pt").read_bytes() != (tmp_path / "ck" / "CartPole-v1.pt").read_bytes()
    assert {p.name for p in aside_pl.iterdir()} >= {"CartPole-v1.csv", "CartPole-v1.png"}
    assert load_checkpoint(tmp_path / "ck" / "CartPole-v1.pt")["counters"]["frames"] < first["counters"]["frames"]
    resume = ["--use-trained", "--max-frames", "900", "--checkpoint-dir", str(aside_ck), "--plot-dir", str(aside_pl)]
    assert cli.main([*cartpole(tmp_path), *resume]) == 0
    assert load_checkpoint(aside_ck / "CartPole-v1.pt")["counters"]["frames"] >= 900


def test_use_trained_and_start_over_together_are_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert cli.main(cartpole(tmp_path, "--use-trained", "--start-over")) == 2
    assert "give one of them" in capsys.readouterr().err


def test_a_trainer_holds_its_files_until_its_run_ends(tmp_path: Path):
    """A second trainer on the same files (in this process or another) is refused while the first holds them, and
    gets them once the first has run."""
    cfg = build_config({"env_name": "CartPole-v1", "serial": True, "max_frames": 200, "hidden_size": 16,
                        "checkpoint_dir": str(tmp_path / "ck"), "plot_dir": str(tmp_path / "pl")})  # fmt: skip
    first = local_trainer(cfg)
    first.save()
    for second in (cfg, cfg.replace(use_trained=True)):
        with pytest.raises(ConfigError, match=r"another run \(pid \d+, started .*\) is training CartPole-v1"):
            local_trainer(second)
    assert first.run() == 0
    local_trainer(cfg.replace(use_trained=True)).close()


@pytest.mark.skipif(not HAS_PROC, reason="needs /proc to find the run's processes")
@pytest.mark.multiprocess
def test_a_second_run_on_the_files_of_a_live_run_refuses_in_one_line(tmp_path: Path):
    """While a real run trains, the same command with --use-trained (which would otherwise take turns with it at
    replacing the checkpoint) refuses in one line with exit status 2; the first run goes on and ends as usual."""
    args = [
        "--env-name", "CartPole-v1", "--n-workers", "1", "--save-interval", "0.5",
        "--checkpoint-dir", str(tmp_path / "ck"), "--plot-dir", str(tmp_path / "pl"),
    ]  # fmt: skip
    marker = uuid.uuid4().hex
    run = start_main(args, marker, tmp_path / "logs")
    try:
        wait_for(lambda: (tmp_path / "ck" / "CartPole-v1.pt").exists() or run.poll() is not None, 120, "a save")
        assert run.poll() is None, read_log(tmp_path / "logs")[1][-2000:]
        second = subprocess.run(
            [sys.executable, "main.py", *args, "--use-trained"], capture_output=True, text=True, timeout=120,
            cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert f"another run (pid {run.pid}" in lines[0] and "is training CartPole-v1" in lines[0]
    finally:
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=30) == 130
    assert_no_survivors(marker)
    load_checkpoint(tmp_path / "ck" / "CartPole-v1.pt")

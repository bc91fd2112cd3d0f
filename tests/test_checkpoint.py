"""Checkpoints: atomic round trip with .prev, clear CheckpointErrors for bad files (left untouched), compatibility."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from a3c.checkpoint import CheckpointError, check_compatible, load_checkpoint, save_checkpoint
from a3c.model import ActorCritic

OBS_SHAPE = (4,)
SPEC = {"obs_shape": [4], "num_actions": 2, "arch": "paper", "hidden_size": 16}


class NotPlainData:
    """A custom class: torch.load(weights_only=True) must refuse to rebuild it."""

    def __init__(self) -> None:
        self.x = 1


def tiny_model(seed: int) -> ActorCritic:
    torch.manual_seed(seed)
    return ActorCritic(OBS_SHAPE, num_actions=2, hidden_size=16)


def make_payload(model: ActorCritic, frames: int = 100) -> dict:
    """A payload shaped like the trainer's (tensors and plain data only)."""
    return {
        "format": "a3c-checkpoint",
        "version": 1,
        "env_name": "CartPole-v1",
        "model_spec": dict(SPEC),
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": {"name": "adam", "state": torch.optim.Adam(model.parameters()).state_dict()},
        "counters": {"frames": frames, "updates": 5, "skipped_updates": 0, "elapsed_s": 1.5, "games": 1},
        "history": {"names": ["score"], "columns": [[1.0, 2.0]]},
    }


def greedy_actions(model: ActorCritic, obs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(obs, model.initial_state(obs.shape[0])).logits.argmax(-1)


def test_round_trip_same_state_same_greedy_action(tmp_path: Path):
    """save then load gives back every tensor and counter; a model loaded from it picks the same greedy actions."""
    model = tiny_model(0)
    path = tmp_path / "ck" / "CartPole-v1.pt"  # the directory does not exist yet
    save_checkpoint(make_payload(model), path)
    payload = load_checkpoint(path)
    assert payload["counters"]["frames"] == 100
    assert payload["history"] == {"names": ["score"], "columns": [[1.0, 2.0]]}
    for name, tensor in model.state_dict().items():
        assert torch.equal(payload["model"][name], tensor), name
    restored = tiny_model(1)
    restored.load_state_dict(payload["model"])
    obs = torch.randn(16, 4)
    assert torch.equal(greedy_actions(restored, obs), greedy_actions(model, obs))
    assert sorted(p.name for p in path.parent.iterdir()) == ["CartPole-v1.pt"]  # no temporary files left


def test_second_save_keeps_prev(tmp_path: Path):
    """The second save moves the first checkpoint to <name>.pt.prev, which still loads."""
    path = tmp_path / "Pong.pt"
    save_checkpoint(make_payload(tiny_model(0), frames=100), path)
    save_checkpoint(make_payload(tiny_model(0), frames=200), path)
    assert load_checkpoint(path)["counters"]["frames"] == 200
    prev = tmp_path / "Pong.pt.prev"
    assert load_checkpoint(prev)["counters"]["frames"] == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Pong.pt", "Pong.pt.prev"]


def test_missing_file_says_how_to_fix(tmp_path: Path):
    """A missing checkpoint names the path and says to train first or pass --checkpoint-dir."""
    with pytest.raises(CheckpointError, match="no checkpoint at .*--checkpoint-dir"):
        load_checkpoint(tmp_path / "nothing.pt")


def _truncated(path: Path) -> bytes:
    save_checkpoint(make_payload(tiny_model(0)), path)
    data = path.read_bytes()
    return data[: len(data) // 2]


def _custom_class(path: Path) -> bytes:
    torch.save({"format": "a3c-checkpoint", "version": 1, "evil": NotPlainData()}, path)
    return path.read_bytes()


def _wrong_format(path: Path) -> bytes:
    payload = make_payload(tiny_model(0))
    payload["format"] = "someone-elses-checkpoint"
    torch.save(payload, path)
    return path.read_bytes()


def _wrong_version(path: Path) -> bytes:
    payload = make_payload(tiny_model(0))
    payload["version"] = 99
    torch.save(payload, path)
    return path.read_bytes()


def _missing_keys(path: Path) -> bytes:
    payload = make_payload(tiny_model(0))
    del payload["model"], payload["history"]
    torch.save(payload, path)
    return path.read_bytes()


BAD_FILES = {
    # name: (how to make the bytes, what the message must say)
    "truncated": (_truncated, "truncated or not a checkpoint"),
    # Seed 0's first byte is not a pickle opcode: torch raises UnpicklingError.
    "random_bytes": (lambda path: random.Random(0).randbytes(4096), "Bad.pt"),
    "custom_class": (_custom_class, "refused"),
    "wrong_format": (_wrong_format, "not an a3c checkpoint"),
    "wrong_version": (_wrong_version, "version 99"),
    "missing_keys": (_missing_keys, "lacks history, model"),
}

# Files whose bytes make torch's weights-only unpickler raise something other than UnpicklingError.
ESCAPING_FILES = {
    "text_file": b"hello world\n",  # KeyError: 101 ('h' is BINGET of memo slot 101)
    "csv_file": b"time_s,frames,worker,score,length,avg100\n1.0,400,0,-21.0,900,-21.0\n",  # IndexError
    "random_bytes_seed2": random.Random(2).randbytes(4096),  # IndexError: pop from empty list
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_file_raises_checkpoint_error_and_is_left_alone(tmp_path: Path, kind: str):
    """Truncated, random, code-carrying, foreign, other-version and incomplete files raise a clear CheckpointError."""
    make, expected = BAD_FILES[kind]
    path = tmp_path / "Bad.pt"
    data = make(path)
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=expected) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message or path.name in message
    assert "\n" not in message  # one line, for the CLI's one-line error
    assert path.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Bad.pt"]


@pytest.mark.parametrize("kind", list(ESCAPING_FILES))
def test_text_or_garbage_file_raises_checkpoint_error(tmp_path: Path, kind: str):
    """A text file or garbage whose bytes confuse the unpickler still gives a CheckpointError, file untouched."""
    path = tmp_path / "Bad.pt"
    path.write_bytes(ESCAPING_FILES[kind])
    with pytest.raises(CheckpointError, match="Bad.pt"):
        load_checkpoint(path)
    assert path.read_bytes() == ESCAPING_FILES[kind]


def test_random_bytes_message_does_not_claim_code(tmp_path: Path):
    """Random bytes are reported as not a checkpoint, not as a file that could run code."""
    path = tmp_path / "Bad.pt"
    path.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "could run code" not in str(info.value)


def test_check_compatible_accepts_the_same_game_and_network(tmp_path: Path):
    """The env and spec it was saved with pass."""
    check_compatible(make_payload(tiny_model(0)), "CartPole-v1", dict(SPEC), tmp_path / "x.pt")


def test_check_compatible_refuses_another_env(tmp_path: Path):
    """A checkpoint trained on another game is refused, naming both games and the flag to use."""
    with pytest.raises(CheckpointError, match="trained on CartPole-v1, not Acrobot-v1: use --env-name CartPole-v1"):
        check_compatible(make_payload(tiny_model(0)), "Acrobot-v1", dict(SPEC), tmp_path / "x.pt")


def test_check_compatible_refuses_another_model_spec(tmp_path: Path):
    """A checkpoint of another network (hidden_size, arch) is refused, naming each difference."""
    other = {**SPEC, "hidden_size": 256, "arch": "small"}
    with pytest.raises(CheckpointError, match="another network") as info:
        check_compatible(make_payload(tiny_model(0)), "CartPole-v1", other, tmp_path / "x.pt")
    assert "hidden_size 16 vs 256" in str(info.value)
    assert "arch paper vs small" in str(info.value)


def with_optimizer_state(model: ActorCritic) -> dict:
    """A payload whose optimizer has taken one step: real statistics to damage."""
    optimizer = torch.optim.Adam(model.parameters())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    return make_payload(model) | {"optimizer": {"name": "adam", "state": optimizer.state_dict()}}


DAMAGE = {
    "inf statistic": (
        lambda p: p["optimizer"]["state"]["state"][0]["exp_avg_sq"].view(-1).__setitem__(0, float("inf")),
        "non-finite values in optimizer.state.state.0.exp_avg_sq (1 of",
    ),
    "nan weight": (
        lambda p: next(iter(p["model"].values())).view(-1).__setitem__(0, float("nan")),
        "non-finite values in model.",
    ),
    "huge network": (
        lambda p: p.__setitem__("config", {"hidden_size": 30000, "arch": "small"}),
        "network settings this a3c would not build (hidden_size must be between 1 and 4096, got 30000)",
    ),
    "network setting of the wrong type": (
        lambda p: p.__setitem__("config", {"frame_size": "42"}),
        "frame_size must be int",
    ),
    "negative counter": (lambda p: p["counters"].__setitem__("frames", -5), "counters that are not non-negative"),
    "ragged history": (
        lambda p: p.__setitem__("history", {"names": ["a", "b"], "columns": [[1.0], [1.0, 2.0]]}),
        "history that is not columns of one length",
    ),
    "no statistics": (lambda p: p.__setitem__("optimizer", {"name": "adam"}), "holds no optimizer statistics"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_contents_are_refused_before_anything_is_built_from_them(tmp_path: Path, damage: str):
    """A file that loads but holds what no save writes (non-finite weights or statistics, a network too large to
    build, counters or a history of the wrong shape) is a CheckpointError that names what is wrong."""
    payload = with_optimizer_state(tiny_model(0))
    damage_it, message = DAMAGE[damage]
    damage_it(payload)
    path = tmp_path / "CartPole-v1.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="it is damaged: restore CartPole-v1.pt.prev or retrain") as error:
        load_checkpoint(path)
    assert message in str(error.value)


def test_a_crafted_network_is_refused_by_the_command_line_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture):
    """--use-trained on a checkpoint whose config asks for hidden_size 30000 (tens of GB of LSTM) is one line and exit
    status 2, before any model is built."""
    from a3c import cli

    payload = with_optimizer_state(tiny_model(0)) | {"config": {"hidden_size": 30000}}
    (tmp_path / "ck").mkdir()
    torch.save(payload, tmp_path / "ck" / "CartPole-v1.pt")
    args = ["--env-name", "CartPole-v1", "--use-trained", "--checkpoint-dir", str(tmp_path / "ck")]
    assert cli.main([*args, "--plot-dir", str(tmp_path / "pl"), "--serial"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hidden_size must be between 1 and 4096, got 30000" in err[0]

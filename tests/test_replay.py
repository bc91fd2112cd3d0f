"""The replayed backward pass gives the gradients autograd gives on the recomputed rollout (forward_rollout)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from a3c.config import build_config
from a3c.losses import LossTerms, a3c_loss, a3c_loss_gradients, compute_targets
from a3c.model import ActorCritic
from a3c.replay import Tape
from a3c.trainer import Trainer
from a3c.worker import Rollout, Worker

NETS = {
    "pong (small, standardized, no fc)": ((1, 42, 42), "small", True, False),
    "paper (pixels / 255, fc)": ((4, 84, 84), "paper", False, True),
    "small with fc": ((2, 42, 42), "small", False, True),
    "mlp (vector observations)": ((4,), "paper", False, True),
}


def rollout_loss(rollout: Rollout, logits: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor) -> LossTerms:
    """The worker's loss for logits [T, B, A] and values [T, B], bootstrapping from next_values [T, B]."""
    next_values = torch.where(rollout.truncated, rollout.truncation_values, next_values)
    targets = compute_targets(
        rollout.rewards, values.detach(), next_values, rollout.terminated, rollout.episode_ends, 0.99, 1.0
    )
    return a3c_loss(logits, values, rollout.actions, targets, entropy_coef=0.01, value_loss_coef=0.5)


def reference_gradients(model: ActorCritic, rollout: Rollout) -> dict[str, torch.Tensor]:
    """Autograd on the recomputed rollout."""
    model.zero_grad(set_to_none=True)
    logits, values = model.forward_rollout(rollout.obs, rollout.state, rollout.resets)
    rollout_loss(rollout, logits[:-1], values[:-1], values[1:].detach()).total.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def replayed_gradients(model: ActorCritic, tape: Tape, rollout: Rollout) -> dict[str, torch.Tensor]:
    """The worker's way: the loss's gradient by hand (a3c_loss_gradients), everything else replayed from the tape."""
    model.zero_grad(set_to_none=True)
    logits, values = tape.heads()
    next_values = torch.cat((torch.from_numpy(values[1:]), rollout.bootstrap_values.unsqueeze(0)))
    next_values = torch.where(rollout.truncated, rollout.truncation_values, next_values)
    targets = compute_targets(
        rollout.rewards, torch.from_numpy(values), next_values, rollout.terminated, rollout.episode_ends, 0.99, 1.0
    )
    gradients = a3c_loss_gradients(logits, values, rollout.actions.numpy(), targets, 0.01, 0.5)
    tape.backward(gradients.logits, gradients.values, rollout.state, rollout.resets)
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_same_gradients(replayed: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert replayed.keys() == reference.keys()
    for name, grad in reference.items():
        assert grad.abs().max() > 0, f"{name}: the reference gradient is zero, the test would prove nothing"
        assert_close(replayed[name], grad, rtol=1e-4, atol=1e-4 * grad.abs().max().item(), msg=name)


def synthetic_rollout(model: ActorCritic, tape: Tape, steps: int, batch: int, resets_at: list[tuple[int, int]]):
    """Step the tape over random observations, zeroing the state where resets_at says an episode began."""
    if model.is_image:
        obs = torch.randint(0, 256, (steps + 1, batch, *model.obs_shape), dtype=torch.uint8)
    else:
        obs = torch.randn(steps + 1, batch, *model.obs_shape)
    resets = torch.zeros(steps + 1, batch)
    for t, k in resets_at:
        resets[t, k] = 1.0
    state = (torch.randn(batch, model.hidden_size), torch.randn(batch, model.hidden_size))  # a carried-in state
    terminated = torch.zeros(steps, batch, dtype=torch.bool)
    truncated = torch.zeros(steps, batch, dtype=torch.bool)
    for t, k in resets_at:
        if t > 0:
            (terminated if (t + k) % 2 else truncated)[t - 1, k] = True
    tape.start()
    with torch.inference_mode():
        h, c = state
        for t in range(steps + 1):
            keep = (1.0 - resets[t]).unsqueeze(1)
            h, c = h * keep, c * keep
            if t < steps:
                _, _, (h, c) = tape.step(t, obs[t], (h, c))
        # The bootstrap value, as the worker takes it: a step after the last, in buffers the backward does not read.
        bootstrap_values = tape.step(steps, obs[steps], (h, c)).value.clone()
        assert_close(bootstrap_values, model(obs[steps], (h, c)).value, rtol=1e-5, atol=1e-6)
    return Rollout(
        obs=obs,
        actions=torch.randint(0, model.num_actions, (steps, batch)),
        rewards=torch.randn(steps, batch),
        terminated=terminated,
        episode_ends=terminated | truncated,
        truncated=truncated,
        truncation_values=torch.randn(steps, batch) * truncated,
        resets=resets,
        state=state,
        bootstrap_values=bootstrap_values,
    )


@pytest.mark.parametrize("net", NETS, ids=str)
@pytest.mark.parametrize("resets_at", [[], [(0, 1), (2, 0), (4, 0), (4, 1), (6, 0)]], ids=["no resets", "resets"])
@pytest.mark.parametrize("batch", [1, 2], ids=["one game (numpy's trunk)", "two games"])
def test_replayed_gradients_equal_autograd_on_the_recomputed_rollout(
    net: str, resets_at: list[tuple[int, int]], batch: int
):
    """Every parameter's gradient, for each trunk, with episodes beginning mid-rollout (and at step 0, and at the
    bootstrap step), for one game (the trunk's forward pass in numpy) and in both games of a batch of 2."""
    torch.manual_seed(0)
    obs_shape, arch, standardize, fc = NETS[net]
    model = ActorCritic(
        obs_shape, num_actions=6, hidden_size=32, arch=arch, standardize_frames=standardize, fc_layer=fc
    )
    steps = 6
    resets_at = [(t, k) for t, k in resets_at if k < batch]
    tape = Tape(model, steps, batch)
    assert (tape.trunk_np is not None) == (batch == 1)
    rollout = synthetic_rollout(model, tape, steps, batch, resets_at)
    assert_same_gradients(replayed_gradients(model, tape, rollout), reference_gradients(model, rollout))


def test_a_tape_is_reused_across_rollouts():
    """The tape's buffers are overwritten each rollout: the second rollout's gradients are its own."""
    torch.manual_seed(1)
    model = ActorCritic((1, 42, 42), num_actions=6, hidden_size=32, arch="small", standardize_frames=True)
    tape = Tape(model, 5, 1)
    first = synthetic_rollout(model, tape, 5, 1, [(3, 0)])
    second = synthetic_rollout(model, tape, 5, 1, [])
    assert_same_gradients(replayed_gradients(model, tape, second), reference_gradients(model, second))
    assert not torch.equal(first.obs, second.obs)


@pytest.mark.parametrize("batch", [1, 2], ids=["one game (numpy's trunk and product)", "two games"])
def test_tape_steps_are_the_models_forward_with_the_weights_taken_at_start(batch: int):
    """step() gives model.forward's logits, value and state; after the weights change, start() takes the new ones."""
    torch.manual_seed(2)
    model = ActorCritic((1, 42, 42), num_actions=6, hidden_size=32, arch="small", standardize_frames=True)
    tape = Tape(model, 3, batch)
    obs = torch.randint(0, 256, (batch, 1, 42, 42), dtype=torch.uint8)
    state = (torch.randn(batch, 32), torch.randn(batch, 32))
    for _ in range(2):
        tape.start()
        with torch.inference_mode():
            got, want = tape.step(1, obs, state), model(obs, state)
        for a, b in zip((got.logits, got.value, *got.state), (want.logits, want.value, *want.state), strict=True):
            assert_close(a, b, rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * p.abs().mean())


def worker_updates_match_autograd(tmp_path: Path, updates: int, **settings: object) -> list[Rollout]:
    """Run a real worker's collect and update `updates` times, checking each update's gradients (and their memory
    layout, which the fused Adam step relies on) against autograd on the rollout it collected."""
    cfg = build_config(
        {
            "max_grad_norm": 1e9,  # no clipping: compare the raw gradients
            "checkpoint_dir": str(tmp_path / "checkpoints"),
            "plot_dir": str(tmp_path / "plots"),
            **settings,
        }
    )
    worker = Worker(0, cfg, Trainer(cfg).shared)
    rollouts = []
    try:
        for _ in range(updates):
            worker.sync()
            rollout = worker.collect()
            assert worker.update(rollout) is not None
            params = dict(worker.model.named_parameters())
            assert all(p.grad.stride() == p.stride() for p in params.values())
            replayed = {name: p.grad.clone() for name, p in params.items()}
            assert_same_gradients(replayed, reference_gradients(worker.model, rollout))
            rollouts.append(rollout)
    finally:
        worker.close()
    return rollouts


def test_worker_update_hands_over_the_autograd_gradients(tmp_path: Path):
    """A real worker on CartPole (2 games, 15-step time limit: terminations and truncations mid-rollout): the
    gradients its update computes equal autograd's on the rollout it collected."""
    settings = {"env_name": "CartPole-v1", "envs_per_worker": 2, "rollout_len": 20, "ep_length": 15}
    rollouts = worker_updates_match_autograd(tmp_path, 4, **settings)
    assert any(r.truncated.any() for r in rollouts) and any(r.terminated.any() for r in rollouts)


@pytest.mark.parametrize("max_grad_norm", [1e-3, 1e9], ids=["clipped", "within the limit"])
def test_worker_update_clips_the_gradient_norm(tmp_path: Path, max_grad_norm: float):
    """Above --max-grad-norm every gradient is scaled by max / (norm + 1e-6), as clip_grad_norm_ does; within it
    they are left as they are."""
    cfg = build_config(
        {
            "env_name": "CartPole-v1",
            "max_grad_norm": max_grad_norm,
            "checkpoint_dir": str(tmp_path / "checkpoints"),
            "plot_dir": str(tmp_path / "plots"),
        }
    )
    worker = Worker(0, cfg, Trainer(cfg).shared)
    try:
        worker.sync()
        rollout = worker.collect()
        assert worker.update(rollout) is not None
        got = {name: p.grad.clone() for name, p in worker.model.named_parameters()}
        reference = reference_gradients(worker.model, rollout)
        norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in reference.values()]))
        scale = min(1.0, max_grad_norm / (float(norm) + 1e-6))
        assert (scale < 1.0) == (max_grad_norm < 1.0)
        assert_same_gradients(got, {name: g * scale for name, g in reference.items()})
    finally:
        worker.close()


@pytest.mark.parametrize("config", ["pong.toml", "the paper's net"])
def test_worker_update_on_pong_hands_over_the_autograd_gradients(tmp_path: Path, config: str):
    """The same on real Pong frames, with Pong's default net and with the paper's (84x84x4, pixels / 255, fc)."""
    settings: dict[str, object] = {"env_name": "PongNoFrameskip-v4", "rollout_len": 10, "hidden_size": 32}
    if config != "pong.toml":
        settings |= {"arch": "paper", "frame_size": 84, "frame_stack": 4, "standardize_frames": False}
        settings |= {"fc_layer": True, "crop_top": 0, "crop_bottom": 0}
    worker_updates_match_autograd(tmp_path, 2, **settings)


@pytest.mark.parametrize(
    "trunk",
    [
        nn.Sequential(nn.Linear(4, 8), nn.Sigmoid()),
        nn.Sequential(nn.Linear(4, 8, bias=False), nn.Tanh()),
        nn.Sequential(nn.Tanh(), nn.Linear(4, 8), nn.Tanh()),
    ],
    ids=["an unknown activation", "no bias", "an activation first"],
)
def test_a_trunk_without_a_written_backward_pass_is_refused(trunk: nn.Module):
    """A trunk layer the replay cannot differentiate raises TypeError instead of giving wrong gradients."""
    model = ActorCritic((4,), num_actions=2, hidden_size=8)
    model.trunk = trunk
    with pytest.raises(TypeError, match="no replayed backward pass"):
        Tape(model, steps=3, batch=1)

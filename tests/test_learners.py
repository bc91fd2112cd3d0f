"""Both learners give the gradients of autograd on the recomputed rollout (forward_rollout); the tape refuses what
it cannot replay; the trainer picks the learner once, at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import local_trainer, run_main
from torch import nn
from torch.testing import assert_close

from a3c.config import Config, ConfigError, build_config
from a3c.learners import Learner, Rollout, choose_learner, make_learner
from a3c.learners import tape as tape_module
from a3c.learners.tape import LAYER_KINDS, Tape, tape_refusal
from a3c.losses import LossTerms, a3c_loss, compute_targets
from a3c.model import ActorCritic, PixelConv2d
from a3c.worker import Worker

LEARNERS = ["tape", "autograd"]
NETS = {
    "pong (small, standardized, no fc)": ((1, 42, 42), "small", True, False),
    "paper (pixels / 255, fc)": ((4, 84, 84), "paper", False, True),
    "nature (pixels / 255, fc)": ((4, 84, 84), "nature", False, True),
    "small with fc": ((2, 42, 42), "small", False, True),
    "mlp (vector observations)": ((4,), "paper", False, True),
}
LOSS_CFG = Config()  # gamma 0.99, gae_lambda 1, entropy_coef 0.01, value_loss_coef 0.5: what rollout_loss uses


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


def learner_gradients(learner: Learner, rollout: Rollout) -> dict[str, torch.Tensor]:
    """The learner's way: its backward() on the rollout it recorded."""
    learner.model.zero_grad(set_to_none=True)
    terms = learner.backward(rollout, LOSS_CFG)
    assert isinstance(terms, LossTerms) and torch.isfinite(terms.total)
    return {name: p.grad.clone() for name, p in learner.model.named_parameters()}


def assert_same_gradients(replayed: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert replayed.keys() == reference.keys()
    for name, grad in reference.items():
        assert grad.abs().max() > 0, f"{name}: the reference gradient is zero, the test would prove nothing"
        assert_close(replayed[name], grad, rtol=1e-4, atol=1e-4 * grad.abs().max().item(), msg=name)


def synthetic_rollout(learner: Learner, steps: int, batch: int, resets_at: list[tuple[int, int]]) -> Rollout:
    """Step the learner over random observations, zeroing the state where resets_at says an episode began."""
    model = learner.model
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
    recording = learner.start()
    with torch.inference_mode():
        h, c = state
        for t in range(steps + 1):
            keep = (1.0 - resets[t]).unsqueeze(1)
            h, c = h * keep, c * keep
            if t < steps:
                _, _, (h, c) = learner.step(t, obs[t], (h, c))
        # The bootstrap value, as the worker takes it: a step after the last (for the tape, in buffers its backward
        # pass does not read).
        bootstrap_values = learner.step(steps, obs[steps], (h, c)).value.clone()
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
        recording=recording,
    )


@pytest.mark.parametrize("learner", LEARNERS)
@pytest.mark.parametrize("net", NETS, ids=str)
@pytest.mark.parametrize("resets_at", [[], [(0, 1), (2, 0), (4, 0), (4, 1), (6, 0)]], ids=["no resets", "resets"])
@pytest.mark.parametrize("batch", [1, 2], ids=["one game (numpy's trunk)", "two games"])
def test_learner_gradients_equal_autograd_on_the_recomputed_rollout(
    learner: str, net: str, resets_at: list[tuple[int, int]], batch: int
):
    """Every parameter's gradient, for each trunk, with episodes beginning mid-rollout (and at step 0, and at the
    bootstrap step), for one game (the tape's trunk in numpy) and in both games of a batch of 2."""
    torch.manual_seed(0)
    obs_shape, arch, standardize, fc = NETS[net]
    model = ActorCritic(
        obs_shape, num_actions=6, hidden_size=32, arch=arch, standardize_frames=standardize, fc_layer=fc
    )
    steps = 6
    resets_at = [(t, k) for t, k in resets_at if k < batch]
    chosen = make_learner(learner, model, steps, batch)
    if learner == "tape":
        assert chosen.numpy_trunk == (batch == 1)
    rollout = synthetic_rollout(chosen, steps, batch, resets_at)
    assert_same_gradients(learner_gradients(chosen, rollout), reference_gradients(model, rollout))


def _model_with_trunk(obs_shape: tuple[int, ...], trunk: nn.Sequential) -> ActorCritic:
    """An ActorCritic whose trunk is `trunk`, its LSTM sized to the trunk's output."""
    model = ActorCritic(obs_shape, num_actions=3, hidden_size=8, arch="small")
    model.trunk = trunk
    with torch.no_grad():
        features = model.features(torch.zeros(1, *obs_shape, dtype=torch.uint8 if len(obs_shape) == 3 else None))
    model.lstm = nn.LSTM(features.shape[1], 8)
    return model.to(memory_format=torch.channels_last)


def _conv_then(layer: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), layer, nn.Flatten())


# One case for each kind of layer the tape knows (tape.LAYER_KINDS): a small network that has it.
LAYER_CASES = {
    nn.Conv2d: (
        (2, 9, 9),
        lambda: nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.Conv2d(4, 3, 2), nn.Flatten()),
    ),
    PixelConv2d: ((2, 9, 9), lambda: nn.Sequential(PixelConv2d(2, 4, 3, stride=2), nn.ReLU(), nn.Flatten())),
    nn.Linear: ((5,), lambda: nn.Sequential(nn.Linear(5, 6), nn.Linear(6, 4))),
    nn.Flatten: (
        (2, 9, 9),
        lambda: nn.Sequential(nn.Conv2d(2, 4, 3, stride=3), nn.Flatten(), nn.Linear(36, 5), nn.ReLU()),
    ),
    nn.ReLU: ((2, 9, 9), lambda: _conv_then(nn.ReLU())),
    nn.ELU: ((2, 9, 9), lambda: _conv_then(nn.ELU(alpha=0.5))),
    nn.Tanh: ((5,), lambda: nn.Sequential(nn.Linear(5, 6), nn.Tanh())),
}


def test_every_layer_kind_of_the_tape_has_a_case():
    """Adding a layer kind to the tape without a case here fails: each one is tested below."""
    assert set(LAYER_CASES) == set(LAYER_KINDS)


@pytest.mark.parametrize("kind", LAYER_CASES, ids=lambda kind: kind.__name__)
@pytest.mark.parametrize("batch", [1, 2], ids=["one game (numpy)", "two games (torch)"])
def test_each_layer_kind_replays_autograds_gradients(kind: type, batch: int):
    """Each layer class's forward passes (numpy and torch) and backward pass, in a small network of its own."""
    torch.manual_seed(3)
    obs_shape, make_trunk = LAYER_CASES[kind]
    model = _model_with_trunk(obs_shape, make_trunk())
    assert any(type(m) is kind for m in model.trunk.modules())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    tape = Tape(model, 4, batch)
    assert tape.numpy_trunk == (batch == 1)
    rollout = synthetic_rollout(tape, 4, batch, [(2, 0)])
    assert_same_gradients(learner_gradients(tape, rollout), reference_gradients(model, rollout))


def test_a_tape_is_reused_across_rollouts():
    """The tape's buffers are overwritten each rollout: the second rollout's gradients are its own."""
    torch.manual_seed(1)
    model = ActorCritic((1, 42, 42), num_actions=6, hidden_size=32, arch="small", standardize_frames=True)
    tape = Tape(model, 5, 1)
    first = synthetic_rollout(tape, 5, 1, [(3, 0)])
    second = synthetic_rollout(tape, 5, 1, [])
    assert_same_gradients(learner_gradients(tape, second), reference_gradients(model, second))
    assert not torch.equal(first.obs, second.obs)


@pytest.mark.parametrize("learner", LEARNERS)
def test_a_rollout_that_is_not_the_latest_is_refused(learner: str):
    """The learner records one rollout at a time: the backward pass of an older one would pair its actions and
    rewards with another rollout's forward passes, so it raises instead."""
    model = ActorCritic((4,), num_actions=2, hidden_size=8)
    chosen = make_learner(learner, model, 3, 1)
    first = synthetic_rollout(chosen, 3, 1, [])
    synthetic_rollout(chosen, 3, 1, [])
    with pytest.raises(RuntimeError, match="update each rollout before collecting the next"):
        chosen.backward(first, LOSS_CFG)


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


def _settings(tmp_path: Path, **settings: object) -> dict[str, object]:
    return {"checkpoint_dir": str(tmp_path / "checkpoints"), "plot_dir": str(tmp_path / "plots"), **settings}


def worker_updates_match_autograd(tmp_path: Path, updates: int, **settings: object) -> list[Rollout]:
    """Run a real worker's collect and update `updates` times, checking each update's gradients (and their memory
    layout, which the fused Adam step relies on) against autograd on the rollout it collected."""
    trainer = local_trainer(build_config(_settings(tmp_path, max_grad_norm=1e9, **settings)))  # 1e9: no clipping
    assert trainer.cfg.learner == settings["learner"]
    worker = Worker(0, trainer.cfg, trainer.fleet.shared, trainer.fleet.outbox)
    rollouts = []
    try:
        for _ in range(updates):
            worker.sync()
            rollout = worker.collect()
            assert worker.update(rollout) is not None
            params = dict(worker.model.named_parameters())
            assert all(p.grad.stride() == p.stride() for p in params.values())
            got = {name: p.grad.clone() for name, p in params.items()}
            assert_same_gradients(got, reference_gradients(worker.model, rollout))
            rollouts.append(rollout)
    finally:
        worker.close()
    return rollouts


@pytest.mark.parametrize("learner", LEARNERS)
def test_worker_update_hands_over_the_autograd_gradients(tmp_path: Path, learner: str):
    """A real worker on CartPole (2 games, 15-step time limit: terminations and truncations mid-rollout): the
    gradients its update computes equal autograd's on the rollout it collected."""
    settings = {"env_name": "CartPole-v1", "envs_per_worker": 2, "rollout_len": 20, "ep_length": 15}
    rollouts = worker_updates_match_autograd(tmp_path, 4, learner=learner, **settings)
    assert any(r.truncated.any() for r in rollouts) and any(r.terminated.any() for r in rollouts)


def gradients_at_the_local_weights(worker: Worker, rollout: Rollout) -> dict[str, torch.Tensor]:
    """The worker's autograd learner on the rollout, with the run's own loss settings, unclipped."""
    worker.model.zero_grad(set_to_none=True)
    worker.learner.backward(rollout, worker.cfg)
    return {name: p.grad.clone() for name, p in worker.model.named_parameters()}


def test_fresh_gradients_are_taken_at_the_shared_weights_of_the_update(tmp_path: Path):
    """--fresh-gradients: when other workers have stepped the shared model during a rollout, the update's gradients
    are autograd's at the shared weights it finds, not at those the rollout began with; auto picks autograd."""
    settings = _settings(tmp_path, env_name="CartPole-v1", max_grad_norm=1e9, fresh_gradients=True)
    trainer = local_trainer(build_config(settings))
    assert trainer.cfg.learner == "autograd"
    worker = Worker(0, trainer.cfg, trainer.fleet.shared, trainer.fleet.outbox)
    try:
        worker.sync()
        rollout = worker.collect()
        started_from = [p.detach().clone() for p in worker.params]
        with torch.no_grad():  # other workers' steps meanwhile
            for p in worker.shared_params:
                p.add_(torch.randn_like(p) * (p.abs().mean() + 0.05))
            moved = [p.clone() for p in worker.shared_params]
        assert worker.update(rollout) is not None  # it steps the shared model on: `moved` keeps what it found
        got = {name: p.grad.clone() for name, p in worker.model.named_parameters()}
        assert all(torch.equal(p, q) for p, q in zip(worker.params, moved, strict=True))
        assert_same_gradients(got, gradients_at_the_local_weights(worker, rollout))
        with torch.no_grad():
            for p, start in zip(worker.params, started_from, strict=True):
                p.copy_(start)
        stale = gradients_at_the_local_weights(worker, rollout)
        assert any(not torch.allclose(got[name], grad, rtol=1e-2, atol=0) for name, grad in stale.items())
    finally:
        worker.close()


@pytest.mark.parametrize("fresh", [False, True], ids=["rollout's weights", "fresh gradients"])
def test_staleness_counts_the_updates_between_the_gradients_weights_and_its_step(tmp_path: Path, fresh: bool):
    """The losses CSV's staleness: shared updates that landed between the copy of the weights a gradient was taken
    at and its step. Three land during the rollout: a gradient at the rollout's weights counts them, a fresh one
    (taken after them) does not."""
    trainer = local_trainer(build_config(_settings(tmp_path, env_name="CartPole-v1", fresh_gradients=fresh)))
    worker = Worker(0, trainer.cfg, trainer.fleet.shared, trainer.fleet.outbox)
    try:
        worker.sync()
        rollout = worker.collect()
        trainer.fleet.shared.counters.row(-1)[1] += 3  # three other workers' steps meanwhile (the owner's row)
        assert worker.update(rollout) is not None
        assert worker.loss_sums["staleness"] == (0 if fresh else 3)
    finally:
        worker.close()


@pytest.mark.parametrize("learner", LEARNERS)
@pytest.mark.parametrize("max_grad_norm", [1e-3, 1e9], ids=["clipped", "within the limit"])
def test_worker_update_clips_the_gradient_norm(tmp_path: Path, learner: str, max_grad_norm: float):
    """Above --max-grad-norm every gradient is scaled by max / (norm + 1e-6), as clip_grad_norm_ does; within it
    they are left as they are."""
    trainer = local_trainer(
        build_config(_settings(tmp_path, env_name="CartPole-v1", max_grad_norm=max_grad_norm, learner=learner))
    )
    worker = Worker(0, trainer.cfg, trainer.fleet.shared, trainer.fleet.outbox)
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


@pytest.mark.parametrize("learner", LEARNERS)
@pytest.mark.parametrize("config", ["pong.toml", "the paper's net"])
def test_worker_update_on_pong_hands_over_the_autograd_gradients(tmp_path: Path, config: str, learner: str):
    """The same on real Pong frames, with Pong's default net and with the paper's (84x84x4, pixels / 255, fc)."""
    settings: dict[str, object] = {"env_name": "PongNoFrameskip-v4", "rollout_len": 10, "hidden_size": 32}
    if config != "pong.toml":
        settings |= {"arch": "paper", "frame_size": 84, "frame_stack": 4, "standardize_frames": False}
        settings |= {"fc_layer": True, "crop_top": 0, "crop_bottom": 0}
    worker_updates_match_autograd(tmp_path, 2, learner=learner, **settings)


@pytest.mark.parametrize("env_name", ["CartPole-v1", "PongNoFrameskip-v4"])
@pytest.mark.slow
def test_serial_training_through_either_learner_ends_at_the_same_weights(tmp_path: Path, env_name: str):
    """Six updates of a serial run (--serial: the worker in the trainer's process, deterministic) through the tape
    and through autograd move the shared weights alike: what they end at differs by under 1% of how far they moved."""
    frames_per_update = 20 * (4 if "NoFrameskip" in env_name else 1)
    weights = {}
    for learner in LEARNERS:
        cfg = build_config(
            _settings(
                tmp_path / learner, env_name=env_name, serial=True, learner=learner, max_frames=6 * frames_per_update
            )
        )
        trainer = local_trainer(cfg)
        start = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
        assert trainer.run() == 0
        assert trainer.fleet.shared.counters.totals()[1:] == (6, 0)
        weights[learner] = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    moved = torch.linalg.vector_norm(weights["autograd"] - start)
    assert moved > 0
    assert torch.linalg.vector_norm(weights["tape"] - weights["autograd"]) < 0.01 * moved


@pytest.mark.parametrize(
    "trunk",
    [
        nn.Sequential(nn.Linear(4, 8), nn.Sigmoid()),
        nn.Sequential(nn.Linear(4, 8, bias=False), nn.Tanh()),
        nn.Sequential(nn.Tanh(), nn.Linear(4, 8), nn.Tanh()),
        nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Tanh()),
        nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.1), nn.Tanh()),
    ],
    ids=["an unknown activation", "no bias", "an activation first", "LayerNorm", "Dropout"],
)
def test_a_trunk_without_a_written_backward_pass_is_refused(trunk: nn.Module):
    """A trunk layer the tape cannot differentiate raises TypeError instead of giving wrong gradients."""
    model = ActorCritic((4,), num_actions=2, hidden_size=8)
    model.trunk = trunk
    assert tape_refusal(model) is not None
    with pytest.raises(TypeError, match="no replayed backward pass"):
        Tape(model, steps=3, batch=1)


class _GRUCritic(ActorCritic):
    """A GRU core: state (h, h), stepped by torch.gru_cell; a network only the autograd learner may train."""

    def __init__(self):
        super().__init__((4,), num_actions=2, hidden_size=8)
        self.lstm = nn.GRU(8, 8)

    def lstm_step(self, x, state):
        h = torch.gru_cell(
            x, state[0], self.lstm.weight_ih_l0, self.lstm.weight_hh_l0, self.lstm.bias_ih_l0, self.lstm.bias_hh_l0
        )
        return h, h


@pytest.mark.parametrize(
    "variant",
    ["a GRU", "a two-layer LSTM", "an LSTM with a projection", "a subclass's own forward"],
)
def test_a_core_or_forward_the_tape_does_not_replay_is_refused(variant: str):
    """The tape knows ActorCritic's own forward with a single-layer LSTM; anything else is refused, by name."""
    model = ActorCritic((4,), num_actions=2, hidden_size=8)
    if variant == "a GRU":
        model = _GRUCritic()
    elif variant == "a two-layer LSTM":
        model.lstm = nn.LSTM(8, 8, num_layers=2)
    elif variant == "an LSTM with a projection":
        model.lstm = nn.LSTM(8, 16, proj_size=8)
    else:

        class Scaled(ActorCritic):
            def forward(self, obs, state):
                out = super().forward(obs, state)
                return out._replace(logits=out.logits * 2)

        model = Scaled((4,), num_actions=2, hidden_size=8)
    why = tape_refusal(model)
    assert why is not None and ("GRU" in why or "num_layers=2" in why or "proj_size=8" in why or "forward" in why)
    with pytest.raises(TypeError, match="no replayed backward pass"):
        Tape(model, steps=3, batch=1)


def _vector_model(*trunk: nn.Module) -> ActorCritic:
    model = ActorCritic((4,), num_actions=2, hidden_size=8)
    model.trunk = nn.Sequential(*trunk)
    return model


def _refused_variant(variant: str) -> ActorCritic:
    if variant == "a Linear on conv maps":
        model = ActorCritic((2, 9, 9), num_actions=3, hidden_size=8, arch="small")
        model.trunk = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2), nn.ELU(), nn.Linear(4, 4), nn.Flatten())
        model.lstm = nn.LSTM(64, 8)
        return model
    if variant == "weight_norm":
        model = _vector_model(nn.Linear(4, 8), nn.Tanh())
        torch.nn.utils.weight_norm(model.trunk[0])
        return model
    if variant == "an extra parameter":
        model = ActorCritic((4,), num_actions=2, hidden_size=8)
        model.extra = nn.Parameter(torch.ones(3))
        return model
    if variant == "a layer used twice":
        shared = nn.Linear(8, 8)
        return _vector_model(nn.Linear(4, 8), nn.Tanh(), shared, nn.Tanh(), shared, nn.Tanh())
    if variant == "tied weights":
        first, second = nn.Linear(8, 8), nn.Linear(8, 8)
        second.weight = first.weight
        return _vector_model(nn.Linear(4, 8), nn.Tanh(), first, nn.Tanh(), second, nn.Tanh())
    return _vector_model(nn.Linear(4, 8), nn.ELU(alpha=-0.5))


REFUSED = {
    "a Linear on conv maps": "a Linear on a 4-d input",
    "weight_norm": "hooks",
    "an extra parameter": "no gradient for extra",
    "a layer used twice": "used twice",
    "tied weights": "share a parameter",
    "an ELU with a negative alpha": "alpha -0.5 < 0",
}


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.nn.utils.weight_norm's deprecation
@pytest.mark.parametrize("variant", REFUSED)
def test_a_network_the_tape_cannot_run_is_refused_at_start_up_not_crashed(variant: str):
    """Networks that pass the layer table yet would crash the tape, or get a gradient overwritten or left out, are
    refused by name: auto takes autograd, and an explicit tape is a ConfigError, never a traceback."""
    model = _refused_variant(variant)
    learner, why = choose_learner(_cfg("auto"), model)
    assert learner == "autograd" and REFUSED[variant] in why, why
    with pytest.raises(ConfigError, match="--learner tape cannot"):
        choose_learner(_cfg("tape"), model)


def _cfg(learner: str, **settings: object) -> Config:
    return Config(env_name="CartPole-v1", learner=learner, rollout_len=5, **settings).validate()


def test_auto_takes_the_tape_for_the_shipped_networks():
    """Pong's net, the paper's and the MLP pass the start-up check: the default keeps its fast path."""
    for model in (
        ActorCritic((1, 42, 42), 6, 32, arch="small", standardize_frames=True, fc_layer=False),
        ActorCritic((4, 84, 84), 6, 32, arch="paper"),
        ActorCritic((4,), 2, 32),
    ):
        assert choose_learner(_cfg("auto"), model)[0] == "tape"
        assert choose_learner(_cfg("autograd"), model)[0] == "autograd"


def test_the_start_up_check_leaves_the_network_as_it_was():
    """The check perturbs the network's weights in place (not every module can be copied): it puts back every bit,
    the training mode, and no gradients."""
    model = ActorCritic((1, 42, 42), 6, 16, arch="small", standardize_frames=True)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    assert choose_learner(_cfg("auto"), model)[0] == "tape"
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_auto_takes_autograd_for_a_network_the_tape_refuses_and_tape_is_a_user_error():
    model = ActorCritic((2, 42, 42), 6, 16, arch="small-groupnorm")
    learner, why = choose_learner(_cfg("auto"), model)
    assert learner == "autograd" and "GroupNorm" in why
    with pytest.raises(ConfigError, match="--learner tape cannot train this network: .*GroupNorm"):
        choose_learner(_cfg("tape"), model)
    assert choose_learner(_cfg("auto", device="meta"), ActorCritic((4,), 2, 8))[0] == "autograd"


def test_an_edit_to_the_model_that_the_tape_does_not_replay_is_caught_at_start_up(monkeypatch: pytest.MonkeyPatch):
    """A change to ActorCritic itself (as a user editing model.py would make) passes the allow-list; the dummy
    rollout against autograd catches it, so auto falls back to autograd and tape is refused."""
    model = ActorCritic((4,), 2, 8)
    monkeypatch.setattr(ActorCritic, "heads", lambda self, h: (self.policy(h) * 2.0, self.value(h).squeeze(-1)))
    assert tape_refusal(model) is None
    learner, why = choose_learner(_cfg("auto"), model)
    assert learner == "autograd" and "differs from ActorCritic.forward" in why
    with pytest.raises(ConfigError, match="--learner tape cannot"):
        choose_learner(_cfg("tape"), model)


def test_a_wrong_backward_pass_in_the_tape_is_caught_at_start_up(monkeypatch: pytest.MonkeyPatch):
    """The check can fail on gradients alone: ELU given the tanh's backward pass (its forward kept) is refused."""

    class WrongELU(tape_module._ELU):
        backward = tape_module._Tanh.backward

    monkeypatch.setitem(LAYER_KINDS, nn.ELU, WrongELU)
    model = ActorCritic((1, 42, 42), 6, 16, arch="small", standardize_frames=True)
    learner, why = choose_learner(_cfg("auto"), model)
    assert learner == "autograd" and "gradient of trunk" in why


def test_a_forward_without_a_matching_forward_rollout_is_a_user_error(monkeypatch: pytest.MonkeyPatch):
    """forward() changed alone would make autograd's update differentiate another function than the one that
    acted: refused for every learner."""
    original = ActorCritic.forward
    monkeypatch.setattr(
        ActorCritic,
        "forward",
        lambda self, obs, state: original(self, obs, state)._replace(value=original(self, obs, state).value + 1),
    )
    with pytest.raises(ConfigError, match="forward_rollout does not compute what stepping ActorCritic.forward does"):
        choose_learner(_cfg("autograd"), ActorCritic((4,), 2, 8))


def _pong_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--env-name", "PongNoFrameskip-v4", "--hidden-size", "32", "--rs", "10",
        "--checkpoint-dir", str(tmp_path / "checkpoints"), "--plot-dir", str(tmp_path / "plots"), *extra,
    ]  # fmt: skip


@pytest.mark.multiprocess
def test_a_network_only_autograd_can_learn_trains_end_to_end(tmp_path: Path):
    """--arch small-groupnorm (a normalization layer the tape has no class for) under the default --learner auto:
    two real workers train Pong through autograd, and the start-up line says why."""
    result = run_main(
        _pong_args(tmp_path, "--arch", "small-groupnorm", "--n-workers", "2", "--max-frames", "3000"), "groupnorm"
    )
    assert result.returncode == 0, result.stderr
    assert "--learner autograd (the tape cannot: trunk layer 1 is GroupNorm" in result.stdout
    payload = torch.load(tmp_path / "checkpoints" / "PongNoFrameskip-v4.pt", weights_only=True)
    assert payload["config"]["learner"] == "autograd"
    assert payload["counters"]["updates"] >= 10 and payload["counters"]["skipped_updates"] == 0
    assert all(torch.isfinite(v).all() for v in payload["model"].values())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--arch", "small-groupnorm", "--learner", "tape"], "--learner tape cannot train this network: trunk layer 1"),
        (["--device", "cuda"], "--device cuda is not usable here"),
    ],
    ids=["tape on a network it cannot replay", "a device this torch has not"],
)
@pytest.mark.slow
def test_a_learner_or_device_that_cannot_work_is_one_line_and_exit_2(tmp_path: Path, flags: list[str], message: str):
    if "cuda" in flags and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    result = run_main(_pong_args(tmp_path, *flags), "learner-refused", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr, result.stderr
    assert not (tmp_path / "checkpoints" / "PongNoFrameskip-v4.pt").exists()

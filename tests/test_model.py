"""ActorCritic: the paper's layer sizes, the output shapes, and forward_rollout == step-by-step forward()."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from a3c.model import ActorCritic, PixelConv2d, sample_actions, standardize_frames

ATARI_SHAPE = (4, 84, 84)


def random_frames(*batch: int) -> torch.Tensor:
    """uint8 frames [*batch, 4, 84, 84]."""
    return torch.randint(0, 256, (*batch, *ATARI_SHAPE), dtype=torch.uint8)


def layers(module: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


def test_paper_architecture_layers():
    """The 'paper' net is conv 16x8x8 s4, conv 32x4x4 s2, fc 256, one LSTM layer of 256 (Mnih et al. 2016)."""
    model = ActorCritic(ATARI_SHAPE, num_actions=6, hidden_size=256, arch="paper")
    conv1, conv2 = layers(model.trunk, nn.Conv2d)
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel_size, conv1.stride) == (4, 16, (8, 8), (4, 4))
    assert (conv2.in_channels, conv2.out_channels, conv2.kernel_size, conv2.stride) == (16, 32, (4, 4), (2, 2))
    (fc,) = layers(model.trunk, nn.Linear)
    # 84 -> (84 - 8) / 4 + 1 = 20 -> (20 - 4) / 2 + 1 = 9: 32 * 9 * 9 = 2592 inputs to the fc layer
    assert (fc.in_features, fc.out_features) == (32 * 9 * 9, 256)
    # An LSTMCell, or a one-layer nn.LSTM stepped cell by cell: the same 256-unit recurrent layer.
    lstm = model.lstm
    assert isinstance(lstm, (nn.LSTMCell, nn.LSTM))
    assert (lstm.input_size, lstm.hidden_size) == (256, 256)
    if isinstance(lstm, nn.LSTM):
        assert lstm.num_layers == 1 and not lstm.bidirectional
    assert (model.policy.out_features, model.value.out_features) == (6, 1)


@pytest.mark.parametrize("arch", ["paper", "nature", "small"])
def test_image_forward_shapes(arch: str):
    """uint8 [B, 4, 84, 84] -> logits float32 [B, A], value float32 [B], and a new (h, c) state [B, hidden]."""
    model = ActorCritic(ATARI_SHAPE, num_actions=6, hidden_size=64, arch=arch)
    state = model.initial_state(3)
    assert all(s.shape == (3, 64) and not s.any() for s in state)
    out = model(random_frames(3), state)
    assert out.logits.shape == (3, 6) and out.logits.dtype == torch.float32
    assert out.value.shape == (3,) and out.value.dtype == torch.float32
    assert out.state[0].shape == (3, 64) and out.state[1].shape == (3, 64)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.value).all()


def test_nature_arch_is_the_nature_papers_convs():
    """'nature' is Mnih et al. 2015's 32 8x8/4, 64 4x4/2, 64 3x3/1 convolutions: 3136 features on 84x84 frames."""
    model = ActorCritic(ATARI_SHAPE, num_actions=4, hidden_size=512, arch="nature", fc_layer=True)
    convs = layers(model.trunk, nn.Conv2d)
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (32, (8, 8), (4, 4)),
        (64, (4, 4), (2, 2)),
        (64, (3, 3), (1, 1)),
    ]
    fc = layers(model.trunk, nn.Linear)[0]
    assert (fc.in_features, fc.out_features) == (3136, 512)


def test_small_arch_is_four_stride2_convs():
    """'small' is four 3x3 stride-2 convolutions of 32 filters."""
    model = ActorCritic(ATARI_SHAPE, num_actions=4, arch="small")
    convs = layers(model.trunk, nn.Conv2d)
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(32, (3, 3), (2, 2))] * 4


def test_vector_observation_uses_mlp():
    """A vector observation (4,) gets an MLP trunk (no convs) and float32 [B, 4] input works."""
    model = ActorCritic((4,), num_actions=2, hidden_size=32)
    assert not model.is_image and not layers(model, nn.Conv2d)
    out = model(torch.randn(5, 4), model.initial_state(5))
    assert out.logits.shape == (5, 2) and out.value.shape == (5,)


def step_by_step(model: ActorCritic, obs: torch.Tensor, state, resets: torch.Tensor):
    """Reference: one forward() per step, zeroing the state before step t where resets[t] is 1."""
    h, c = state
    logits, values = [], []
    for t in range(obs.shape[0]):
        keep = (1.0 - resets[t]).unsqueeze(-1)
        out = model(obs[t], (h * keep, c * keep))
        h, c = out.state
        logits.append(out.logits)
        values.append(out.value)
    return torch.stack(logits), torch.stack(values)


RESET_PATTERNS = {
    "mid": [(2, 0)],  # env 0 began a new episode at step 2; env 1 runs on
    "start": [(0, 1)],  # env 1's carried-in state is stale: its episode began at step 0
    "both": [(1, 0), (3, 0), (3, 1)],  # several segments, both envs at once
}


@pytest.mark.parametrize(
    ("obs_shape", "arch", "pattern"),
    [
        (ATARI_SHAPE, "paper", "mid"),
        (ATARI_SHAPE, "paper", "start"),
        (ATARI_SHAPE, "small", "both"),
        ((4,), "paper", "mid"),
        ((4,), "paper", "both"),
    ],
    ids=str,
)
def test_forward_rollout_equals_step_by_step(obs_shape: tuple[int, ...], arch: str, pattern: str):
    """forward_rollout (batched trunk, stepped LSTM) equals T forward() calls, resets zeroing the state at step t."""
    torch.manual_seed(0)
    steps, batch = 5, 2
    model = ActorCritic(obs_shape, num_actions=6, hidden_size=32, arch=arch)
    if len(obs_shape) == 3:
        obs = random_frames(steps, batch)
    else:
        obs = torch.randn(steps, batch, *obs_shape)
    # A non-zero carried-in state, so a reset visibly matters.
    state = (torch.randn(batch, 32), torch.randn(batch, 32))
    resets = torch.zeros(steps, batch)
    for t, k in RESET_PATTERNS[pattern]:
        resets[t, k] = 1.0
    logits, values = model.forward_rollout(obs, state, resets)
    ref_logits, ref_values = step_by_step(model, obs, state, resets)
    assert logits.shape == (steps, batch, 6) and values.shape == (steps, batch)
    assert_close(logits, ref_logits)
    assert_close(values, ref_values)
    # The resets really matter: ignoring them changes the outputs from the first reset on.
    no_reset_logits, _ = step_by_step(model, obs, state, torch.zeros(steps, batch))
    first_t, first_k = RESET_PATTERNS[pattern][0]
    assert not torch.allclose(no_reset_logits[first_t:, first_k], logits[first_t:, first_k])


def test_forward_rollout_gradients_reach_every_parameter():
    """The recomputed rollout is differentiable through trunk, LSTM and both heads."""
    model = ActorCritic(ATARI_SHAPE, num_actions=6, hidden_size=32)
    logits, values = model.forward_rollout(random_frames(3, 1), model.initial_state(1), torch.zeros(3, 1))
    (logits.sum() + values.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_standardize_frames_centres_and_scales_each_observation():
    """Each observation comes out with mean 0 and std 1 over its pixels; a blank frame stays all zeros."""
    frames = random_frames(3)
    frames[1] = 87  # a blank frame: one background colour
    frames[2, :, 40:42, 40:44] = 236  # a "ball" on a blank background becomes a large value
    frames[2, :, :40] = 87
    frames[2, :, 42:] = 87
    frames[2, :, 40:42, :40] = 87
    frames[2, :, 40:42, 44:] = 87
    x = standardize_frames(frames)
    assert x.dtype == torch.float32 and x.shape == frames.shape
    assert_close(x[0].mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    assert_close(x[0].std(), torch.tensor(1.0), atol=1e-5, rtol=0)
    assert not x[1].any()
    assert x[2, 0, 40, 40] > 20 * x[2, 0, 0, 0].abs()


def test_standardized_model_ignores_brightness_and_uses_plain_first_conv():
    """With standardize_frames the first conv is a plain Conv2d and a uniform brightness shift changes nothing."""
    model = ActorCritic(ATARI_SHAPE, num_actions=6, hidden_size=32, arch="small", standardize_frames=True)
    assert type(layers(model.trunk, nn.Conv2d)[0]) is nn.Conv2d
    frames = torch.randint(0, 200, (2, *ATARI_SHAPE), dtype=torch.uint8)
    state = model.initial_state(2)
    assert_close(model(frames, state).logits, model(frames + 50, state).logits, atol=1e-4, rtol=1e-4)
    plain = ActorCritic(ATARI_SHAPE, num_actions=6, hidden_size=32, arch="small")
    assert type(layers(plain.trunk, nn.Conv2d)[0]) is PixelConv2d


def test_no_fc_layer_feeds_conv_features_to_the_lstm():
    """fc_layer=False: the classic PyTorch A3C's net, 42x42 -> 4 convs -> 32x3x3 = 288 features into the LSTM."""
    model = ActorCritic((1, 42, 42), num_actions=6, hidden_size=256, arch="small", fc_layer=False)
    assert layers(model.trunk, nn.Linear) == []
    assert (model.lstm.input_size, model.lstm.hidden_size) == (32 * 3 * 3, 256)
    obs = torch.randint(0, 256, (4, 2, 1, 42, 42), dtype=torch.uint8)
    logits, values = model.forward_rollout(obs, model.initial_state(2), torch.zeros(4, 2))
    assert logits.shape == (4, 2, 6) and values.shape == (4, 2)


def test_sample_actions_follows_the_softmax_of_each_row():
    """Each row's action frequencies match that row's softmax(logits) (40,000 draws, within 4 standard errors), and
    a dominant logit always wins."""
    logits = torch.tensor(
        [[0.0, 1.0, -1.0, 2.0, 0.5, -3.0], [5.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 60.0]]
    )
    rng = np.random.default_rng(0)
    draws = np.stack([sample_actions(logits, rng) for _ in range(40_000)])  # [draws, rows]
    assert draws.dtype == np.int64
    for row, probs in enumerate(torch.softmax(logits, -1).numpy().astype(np.float64)):
        freq = np.bincount(draws[:, row], minlength=6) / len(draws)
        assert np.all(np.abs(freq - probs) <= 4 * np.sqrt(probs * (1 - probs) / len(draws)) + 1e-12), (row, freq, probs)
    assert np.all(draws[:, 2] == 5)

"""ActorCritic: a conv (or MLP) trunk, an LSTM cell, a softmax policy head and a value head."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from a3c.config import Config, ConfigError

LSTMState = tuple[Tensor, Tensor]  # (h, c), each float32 [B, hidden]


class PolicyOutput(NamedTuple):
    """One step of the network: logits float32 [B, A], value float32 [B], the next LSTM state."""

    logits: Tensor
    value: Tensor
    state: LSTMState


class PixelConv2d(nn.Conv2d):
    """First convolution, fed raw 0-255 pixels: it scales its weights by 1/255 instead of scaling the input.

    Same result as conv(x / 255), without a pass over the frames (a measurable share of the update on a CPU).
    """

    weight_scale = 1.0 / 255.0

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.weight_scale, self.bias)


def standardize_frames(obs: Tensor) -> Tensor:
    """uint8 [N, C, H, W] -> float32, each observation shifted to mean 0 and scaled to std 1 over its pixels.

    Atari frames are mostly a constant background; /255 passes that constant on and the small moving objects
    (Pong's ball is 2x4 pixels) barely register, so a network can settle on features that ignore them. Centring
    each frame removes the background and scaling by its spread makes the objects large. Stateless, unlike the
    running mean/std of the classic repo's NormalizedEnv, so a checkpoint needs nothing beside its weights.
    """
    x = obs.to(torch.float32, copy=True)  # a copy of its own: the steps below work in place
    std, mean = torch.std_mean(x, dim=tuple(range(1, x.dim())), keepdim=True)  # one pass for both
    return x.sub_(mean).div_(std.clamp_min_(1.0))  # a blank frame (std 0) stays all zeros


# The conv trunks --arch can name, in one place. A builder takes the observation's channels and the first
# convolution's class (PixelConv2d for raw pixels, nn.Conv2d for standardized frames) and returns the layers from
# frames to a flat feature vector. To try another network, register a builder here and pass --arch NAME; the
# tape (a3c/learners/tape.py) learns it when it knows every layer, and the autograd learner in every case.
TrunkBuilder = Callable[[int, type[nn.Conv2d]], nn.Sequential]
CONV_TRUNKS: dict[str, TrunkBuilder] = {}


def register_trunk(name: str) -> Callable[[TrunkBuilder], TrunkBuilder]:
    """Decorator: make a conv trunk builder available as --arch name."""

    def register(builder: TrunkBuilder) -> TrunkBuilder:
        CONV_TRUNKS[name] = builder
        return builder

    return register


@register_trunk("paper")
def paper_trunk(channels: int, first: type[nn.Conv2d]) -> nn.Sequential:
    """Mnih et al. 2016 (after Mnih et al. 2015): 16 8x8 filters stride 4, 32 4x4 filters stride 2."""
    return nn.Sequential(
        first(channels, 16, 8, stride=4), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(), nn.Flatten()
    )


@register_trunk("nature")
def nature_trunk(channels: int, first: type[nn.Conv2d]) -> nn.Sequential:
    """Mnih et al. 2015 (Nature), the network every public A2C and PPO Atari curve uses: 32 8x8 filters stride 4,
    64 4x4 stride 2, 64 3x3 stride 1 (3136 features on 84x84 frames; the fc layer of 512 is --fc-layer
    --hidden-size 512)."""
    return nn.Sequential(
        first(channels, 32, 8, stride=4),
        nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1),
        nn.ReLU(),
        nn.Flatten(),
    )


@register_trunk("small")
def small_trunk(channels: int, first: type[nn.Conv2d]) -> nn.Sequential:
    """Four 3x3 stride-2 convolutions of 32 filters, as in the widely used universe-starter-agent."""
    layers: list[nn.Module] = [first(channels, 32, 3, stride=2, padding=1), nn.ELU()]
    for _ in range(3):
        layers += [nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ELU()]
    return nn.Sequential(*layers, nn.Flatten())


@register_trunk("small-groupnorm")
def small_groupnorm_trunk(channels: int, first: type[nn.Conv2d]) -> nn.Sequential:
    """The small trunk with each feature map normalized per observation (GroupNorm with one group, i.e. a layer
    norm over channels and pixels) before its ELU. The tape has no backward pass for normalization layers, so
    this net trains through the autograd learner: an example of a network that only it can learn."""
    layers: list[nn.Module] = []
    for k in range(4):
        conv = first(channels, 32, 3, stride=2, padding=1) if k == 0 else nn.Conv2d(32, 32, 3, stride=2, padding=1)
        layers += [conv, nn.GroupNorm(1, 32), nn.ELU()]
    return nn.Sequential(*layers, nn.Flatten())


class ActorCritic(nn.Module):
    """The A3C network. Image observations are uint8 [B, C, H, W]: 0-255, scaled by the first conv, or each frame
    standardized when standardize_frames is set. Vectors are float32 [B, D]."""

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        num_actions: int,
        hidden_size: int = 256,
        arch: str = "paper",
        standardize_frames: bool = False,
        fc_layer: bool = True,
    ):
        super().__init__()
        if arch not in CONV_TRUNKS:
            raise ConfigError(f"arch must be one of {', '.join(CONV_TRUNKS)}, got {arch!r}")
        self.obs_shape = tuple(obs_shape)
        self.num_actions = num_actions
        self.hidden_size = hidden_size
        lstm_input = hidden_size
        self.is_image = len(self.obs_shape) == 3
        self.standardize = standardize_frames and self.is_image
        if self.is_image:
            conv = CONV_TRUNKS[arch](self.obs_shape[0], nn.Conv2d if self.standardize else PixelConv2d)
            with torch.no_grad():
                flat = conv(torch.zeros(1, *self.obs_shape)).shape[1]
            if fc_layer:
                self.trunk = nn.Sequential(conv, nn.Linear(flat, hidden_size), nn.ReLU())
            else:  # the classic PyTorch A3C: conv features straight into the LSTM
                self.trunk = conv
                lstm_input = flat
        else:
            (size,) = self.obs_shape
            self.trunk = nn.Sequential(
                nn.Linear(size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, hidden_size), nn.Tanh()
            )
        # One nn.LSTM serves both paths: its sequence kernel back-propagates a whole rollout in one call instead of a
        # loop of LSTMCell steps, and torch.lstm_cell with the same weights takes single steps.
        self.lstm = nn.LSTM(lstm_input, hidden_size)
        self.policy = nn.Linear(hidden_size, num_actions)
        self.value = nn.Linear(hidden_size, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.orthogonal_(module.weight, gain=math.sqrt(2))
                nn.init.zeros_(module.bias)
        # A near-uniform first policy explores evenly; a small value head starts near zero.
        nn.init.orthogonal_(self.policy.weight, gain=0.01)
        nn.init.orthogonal_(self.value.weight, gain=1.0)
        nn.init.zeros_(self.lstm.bias_ih_l0)
        nn.init.zeros_(self.lstm.bias_hh_l0)
        # channels_last is the layout oneDNN's CPU convolutions run natively, forward and backward.
        self.to(memory_format=torch.channels_last)

    def initial_state(self, batch_size: int = 1) -> LSTMState:
        """Zero LSTM state, float32 [batch_size, hidden]."""
        zeros = torch.zeros(batch_size, self.hidden_size)
        return zeros, zeros.clone()

    def trunk_input(self, obs: Tensor) -> Tensor:
        """What the trunk receives for N observations: float32 [N, *obs_shape] (channels_last for images)."""
        if self.standardize:
            return standardize_frames(obs).contiguous(memory_format=torch.channels_last)
        if self.is_image:  # uint8 -> channels_last first: the cheap copy is the 1-byte one
            return obs.contiguous(memory_format=torch.channels_last).float()
        return obs.float()

    def features(self, obs: Tensor) -> Tensor:
        """Trunk output float32 [N, lstm input] for N observations."""
        return self.trunk(self.trunk_input(obs))

    def lstm_step(self, x: Tensor, state: LSTMState) -> LSTMState:
        """One LSTM step for a batch: x [B, lstm input] -> the next (h, c)."""
        lstm = self.lstm
        return torch.lstm_cell(x, state, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)

    def heads(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """LSTM outputs [..., hidden] -> logits [..., A], values [...]."""
        return self.policy(h), self.value(h).squeeze(-1)

    def forward(self, obs: Tensor, state: LSTMState) -> PolicyOutput:
        """One step for a batch: obs [B, *obs_shape] -> logits [B, A], value [B], next state."""
        h, c = self.lstm_step(self.features(obs), state)
        logits, value = self.heads(h)
        return PolicyOutput(logits, value, (h, c))

    def forward_rollout(self, obs: Tensor, state: LSTMState, resets: Tensor) -> tuple[Tensor, Tensor]:
        """Recompute a rollout with gradients: obs [T, B, *obs_shape] -> logits [T, B, A], values [T, B].

        The trunk runs once over all T*B frames; the LSTM steps from `state`, zeroing it where resets[t] is 1
        (float32 [T, B]: an episode began at step t), so gradients flow through the whole rollout. The autograd
        learner's update runs this, and the tape's replayed gradients are tested against it. It must compute what
        stepping forward() does: change both together (the trainer checks this at start-up).
        """
        steps, batch = obs.shape[:2]
        x = self.features(obs.reshape(steps * batch, *self.obs_shape)).view(steps, batch, -1)
        h, c = state[0].unsqueeze(0), state[1].unsqueeze(0)
        # Episodes begin rarely (one rollout in tens), so the rollout runs as a few segments through the sequence
        # kernel, the state zeroed at each segment's start where an episode began; same maths as stepping.
        has_reset = resets.any(1).tolist()  # read once: on a GPU each read is a wait for the device
        starts = [0] + [t for t in range(1, steps) if has_reset[t]] + [steps]
        if has_reset[0]:
            keep = (1.0 - resets[0]).view(1, batch, 1)
            h, c = h * keep, c * keep
        outputs = []
        for begin, end in zip(starts[:-1], starts[1:], strict=True):
            if begin > 0:
                keep = (1.0 - resets[begin]).view(1, batch, 1)
                h, c = h * keep, c * keep
            out, (h, c) = self.lstm(x[begin:end], (h, c))
            outputs.append(out)
        logits, values = self.heads(torch.cat(outputs))
        return logits, values


def model_spec(cfg: Config, obs_shape: tuple[int, ...], num_actions: int) -> dict[str, Any]:
    """What a checkpoint's network must match to be loaded (plain data, stored in the checkpoint)."""
    return {
        "obs_shape": list(obs_shape),
        "num_actions": num_actions,
        "arch": cfg.arch,
        "hidden_size": cfg.hidden_size,
        "standardize_frames": cfg.standardize_frames,
        "fc_layer": cfg.fc_layer,
    }


def build_model(cfg: Config, obs_shape: tuple[int, ...], num_actions: int) -> tuple[ActorCritic, dict[str, Any]]:
    """A fresh network for a game's observation shape and action count, and its spec."""
    model = ActorCritic(obs_shape, num_actions, cfg.hidden_size, cfg.arch, cfg.standardize_frames, cfg.fc_layer)
    return model, model_spec(cfg, obs_shape, num_actions)


def sample_actions(logits: Tensor, rng: np.random.Generator) -> np.ndarray:
    """Sample one action per row from softmax(logits) [B, A] by inverse CDF: int64 [B], seeded by the caller's
    generator.

    In plain Python over the row's few numbers: once per agent step, where each tensor or numpy call (and
    torch.multinomial most of all) costs more than the arithmetic."""
    rows = logits.tolist()
    actions = np.empty(len(rows), dtype=np.int64)
    for b, (row, u) in enumerate(zip(rows, rng.random(len(rows)).tolist(), strict=True)):
        top = max(row)
        weights = [math.exp(x - top) for x in row]
        target = u * sum(weights)
        action, total = len(row) - 1, 0.0
        for a, w in enumerate(weights):
            total += w
            if target < total:
                action = a
                break
        actions[b] = action
    return actions

"""What every learner shares: the Rollout it records, the interface the worker calls, the rollout's targets."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
from torch import Tensor

from a3c.config import Config
from a3c.losses import LossTerms, Targets, compute_targets
from a3c.model import ActorCritic, LSTMState, PolicyOutput


class Rollout(NamedTuple):
    """rollout_len steps of B envs. obs [T+1, B, *obs_shape] (the last one is the bootstrap observation);
    actions int64 [T, B]; rewards float32 [T, B] (clipped when training); terminated / episode_ends bool [T, B];
    truncation_values float32 [T, B] = V(final observation) where an episode was truncated; resets float32 [T+1, B]
    (1 where an episode began at that step); state: the LSTM state before step 0 (on the model's device);
    bootstrap_values float32 [B]: V(obs[T]). All but state on the CPU. recording: the learner's token for the
    forward passes that produced it (Learner.start); its backward pass refuses any other rollout."""

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    terminated: Tensor
    episode_ends: Tensor
    truncated: Tensor
    truncation_values: Tensor
    resets: Tensor
    state: LSTMState
    bootstrap_values: Tensor
    recording: object


class Learner(ABC):
    """How a worker gets its gradients: it records a rollout's forward passes (start, then step for each step) and
    computes the update's gradients from them (backward). One rollout at a time: start() begins a new recording
    and the last one's buffers are reused, so backward() refuses a rollout that is not the latest."""

    name: str

    def __init__(self, model: ActorCritic, steps: int, batch: int):
        self.model = model
        self.steps, self.batch = steps, batch
        self.device = next(model.parameters()).device
        self._recording: object | None = None

    def _new_recording(self) -> object:
        self._recording = object()
        return self._recording

    def _check_recording(self, rollout: Rollout) -> None:
        if self._recording is None or rollout.recording is not self._recording:
            raise RuntimeError(
                f"the {self.name} learner holds another rollout's forward passes than this one's: "
                "update each rollout before collecting the next"
            )

    @abstractmethod
    def start(self) -> object:
        """Begin a rollout with the model's current weights; returns the recording token for its Rollout."""

    @abstractmethod
    def step(self, t: int, obs: Tensor, state: LSTMState) -> PolicyOutput:
        """ActorCritic.forward for step t of the rollout (t = steps: the bootstrap value's pass), recording what
        backward() needs. obs [B, *obs_shape] on the CPU; state on the model's device; called in inference mode."""

    def value(self, obs: Tensor, state: LSTMState) -> Tensor:
        """V(obs) [B] with nothing recorded (a truncated game's final observation)."""
        return self.model(obs.to(self.device), state).value

    @abstractmethod
    def backward(self, rollout: Rollout, cfg: Config) -> LossTerms:
        """Set .grad of every model parameter to the gradient of the rollout's A3C loss; return the loss's terms."""


def rollout_targets(rollout: Rollout, values: Tensor, gamma: float, gae_lambda: float) -> Targets:
    """Returns and advantages [T, B] (CPU) for the rollout from its values [T, B] (CPU, no gradient): each step
    bootstraps from the next step's value, the last from V(obs[T]), a truncated one from V(final observation)."""
    next_values = torch.cat((values[1:], rollout.bootstrap_values.unsqueeze(0)))
    next_values = torch.where(rollout.truncated, rollout.truncation_values, next_values)
    return compute_targets(
        rollout.rewards, values, next_values, rollout.terminated, rollout.episode_ends, gamma, gae_lambda
    )

"""The autograd learner: the rollout through ActorCritic.forward, the update through forward_rollout, a3c_loss and
backward(). Any network model.py can build, on the model's device: the reference the tape is held to."""

from __future__ import annotations

import torch
from torch import Tensor

from a3c.config import Config
from a3c.learners.base import Learner, Rollout, rollout_targets
from a3c.losses import LossTerms, Targets, a3c_loss
from a3c.model import LSTMState, PolicyOutput


class AutogradLearner(Learner):
    """Records nothing but the rollout itself: the update recomputes its forward passes with autograd (the paper
    keeps the rollout's graph instead; recomputing costs a second forward pass and frees the rollout of autograd)."""

    name = "autograd"

    def start(self) -> object:
        return self._new_recording()

    def step(self, t: int, obs: Tensor, state: LSTMState) -> PolicyOutput:
        return self.model(obs.to(self.device), state)

    def backward(self, rollout: Rollout, cfg: Config) -> LossTerms:
        """forward_rollout over the rollout's T observations, the loss bootstrapped from the values the rollout
        recorded (V(obs[T]), the truncated games' final values), and autograd's backward pass."""
        self._check_recording(rollout)
        device = self.device
        state = (rollout.state[0].to(device), rollout.state[1].to(device))
        logits, values = self.model.forward_rollout(rollout.obs[:-1].to(device), state, rollout.resets[:-1].to(device))
        targets = rollout_targets(rollout, values.detach().cpu(), cfg.gamma, cfg.gae_lambda)  # its recursion: numpy
        targets = Targets(targets.returns.to(device), targets.advantages.to(device))
        loss = a3c_loss(logits, values, rollout.actions.to(device), targets, cfg.entropy_coef, cfg.value_loss_coef)
        loss.total.backward()
        for p in self.model.parameters():
            if p.grad is None:  # a parameter the loss does not reach: a zero gradient, so clipping sees every one
                p.grad = torch.zeros_like(p)
        return LossTerms(loss.total.detach(), loss.policy, loss.value, loss.entropy)

"""Pure tensor maths of A3C: n-step returns / GAE and the actor-critic loss. No envs, no processes."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class Targets(NamedTuple):
    """returns and advantages, float32 [T, B]."""

    returns: Tensor
    advantages: Tensor


class LossTerms(NamedTuple):
    """The loss and its parts (scalars). entropy is the mean policy entropy per step, for monitoring."""

    total: Tensor
    policy: Tensor
    value: Tensor
    entropy: Tensor


def compute_targets(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    episode_ends: Tensor,
    gamma: float,
    gae_lambda: float,
) -> Targets:
    """Generalised advantage estimation over a rollout; all inputs [T, B].

    next_values[t] is V of the observation after step t (before any reset): the bootstrap at a truncation or at the
    rollout's end. terminated[t] zeroes it (a true terminal); episode_ends[t] (terminated or truncated) stops the
    recursion from reaching into the next episode. With gae_lambda = 1 the advantage is the paper's n-step one,
    R_t - V(s_t) with R_t = r_t + gamma r_{t+1} + ... + gamma^k V(s_{t+k}). Targets carry no gradient through
    the recursion (the loss detaches them anyway).
    """
    not_terminal = 1.0 - terminated.float()
    carry = gamma * gae_lambda * (1.0 - episode_ends.float())
    deltas = rewards + gamma * next_values * not_terminal - values
    advantages = torch.empty_like(deltas)
    # The recursion runs on numpy views of the same memory: T steps of tiny vectors, where a numpy call costs a
    # fraction of a torch one.
    deltas_np, carry_np, advantages_np = deltas.detach().numpy(), carry.numpy(), advantages.numpy()
    running = np.zeros_like(deltas_np[0])
    for t in range(deltas_np.shape[0] - 1, -1, -1):
        running = deltas_np[t] + carry_np[t] * running
        advantages_np[t] = running
    return Targets(advantages + values, advantages)


def a3c_loss(
    logits: Tensor,
    values: Tensor,
    actions: Tensor,
    targets: Targets,
    entropy_coef: float,
    value_loss_coef: float,
) -> LossTerms:
    """Actor-critic loss: policy - entropy_coef * entropy + value_loss_coef * value loss.

    logits [T, B, A], values [T, B], actions int64 [T, B]. Like the paper's accumulated gradients, terms are summed
    over the rollout's steps; they are averaged over the B environments so envs_per_worker does not scale the step.
    """
    log_probs = F.log_softmax(logits, dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    chosen = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    batch = logits.shape[1]
    policy_loss = -(chosen * targets.advantages.detach()).sum() / batch
    value_loss = 0.5 * (targets.returns.detach() - values).pow(2).sum() / batch
    entropy_sum = entropy.sum() / batch
    total = policy_loss - entropy_coef * entropy_sum + value_loss_coef * value_loss
    return LossTerms(total, policy_loss.detach(), value_loss.detach(), entropy.mean().detach())


class LossGradients(NamedTuple):
    """a3c_loss's terms (0-d tensors) and its gradient at the logits (float32 [T, B, A]) and the values ([T, B])."""

    terms: LossTerms
    logits: np.ndarray
    values: np.ndarray


def a3c_loss_gradients(
    logits: np.ndarray,
    values: np.ndarray,
    actions: np.ndarray,
    targets: Targets,
    entropy_coef: float,
    value_loss_coef: float,
) -> LossGradients:
    """a3c_loss and its gradient by hand, in numpy: the worker's update (tested against autograd on a3c_loss).

    The rollout's loss is a few hundred numbers; through autograd its dozen small ops and their backward nodes cost
    several times the arithmetic. With p = softmax(z) and H = -sum p log p:
    d(-A log p_a)/dz = A (p - onehot(a)), d(-c H)/dz = c p (log p + H), d(k/2 (R - V)^2)/dV = k (V - R).
    """
    batch, actions_n = logits.shape[1], logits.shape[2]
    advantages, returns = targets.advantages.detach().numpy(), targets.returns.detach().numpy()
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    probs = np.exp(log_probs)
    entropy = -(probs * log_probs).sum(-1)  # [T, B]
    rows, chosen_actions = np.arange(actions.size), actions.ravel()  # flat indexing: no index arrays built
    chosen = log_probs.reshape(-1, actions_n)[rows, chosen_actions]
    policy_loss = -np.dot(chosen, advantages.ravel()) / batch
    value_error = values - returns
    value_loss = 0.5 * np.dot(value_error.ravel(), value_error.ravel()) / batch
    entropy_sum = entropy.sum() / batch
    total = policy_loss - entropy_coef * entropy_sum + value_loss_coef * value_loss
    grad_logits = probs * (advantages + entropy_coef * entropy)[..., None] + entropy_coef * probs * log_probs
    grad_logits.reshape(-1, actions_n)[rows, chosen_actions] -= advantages.ravel()
    grad_logits /= batch
    grad_values = value_error * (value_loss_coef / batch)
    scalars = torch.tensor([total, policy_loss, value_loss, entropy.mean()], dtype=torch.float32)
    terms = LossTerms(*scalars.unbind())
    return LossGradients(terms, grad_logits.astype(np.float32, copy=False), grad_values.astype(np.float32, copy=False))

"""Known-answer tests of a3c.losses: n-step returns, GAE, terminals vs truncations, and the actor-critic loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from a3c.losses import Targets, a3c_loss, a3c_loss_gradients, compute_targets

GAMMA = 0.9


def col(*xs: float) -> torch.Tensor:
    """A [T, 1] float32 column."""
    return torch.tensor(xs, dtype=torch.float32).unsqueeze(1)


def flags(*xs: int) -> torch.Tensor:
    """A [T, 1] bool column."""
    return torch.tensor(xs, dtype=torch.bool).unsqueeze(1)


def targets_of(rewards, values, next_values, terminated, episode_ends, gae_lambda: float = 1.0) -> Targets:
    return compute_targets(rewards, values, next_values, terminated, episode_ends, GAMMA, gae_lambda)


def test_n_step_returns_bootstrap_from_next_values_at_rollout_end():
    """With gae_lambda=1 the targets are the paper's n-step returns, bootstrapped from V(s_T) at the rollout's end."""
    rewards = col(1.0, 0.0, 2.0)
    values = col(0.5, 0.4, 0.3)
    next_values = col(0.4, 0.3, 1.0)  # V(s_1), V(s_2), V(s_3); V(s_3) = 1.0 is the bootstrap
    out = targets_of(rewards, values, next_values, flags(0, 0, 0), flags(0, 0, 0))
    # R_2 = 2 + 0.9 * 1.0   = 2.9
    # R_1 = 0 + 0.9 * 2.9   = 2.61
    # R_0 = 1 + 0.9 * 2.61  = 3.349
    assert_close(out.returns, col(3.349, 2.61, 2.9))
    # A_t = R_t - V(s_t) = 3.349 - 0.5, 2.61 - 0.4, 2.9 - 0.3
    assert_close(out.advantages, col(2.849, 2.21, 2.6))
    assert out.returns.dtype == torch.float32 and out.returns.shape == (3, 1)


def test_terminal_mid_rollout_zeroes_bootstrap_and_stops_recursion():
    """A true terminal at t=1 gives R_1 = r_1 exactly: no bootstrap, and nothing from the next episode leaks in."""
    rewards = col(1.0, 1.0, 1.0)
    values = col(0.5, 0.4, 0.3)
    # next_values[1] is V of the reset observation (the worker passes it); a huge value shows it is ignored.
    next_values = col(0.4, 100.0, 2.0)
    out = targets_of(rewards, values, next_values, flags(0, 1, 0), flags(0, 1, 0))
    # R_2 = 1 + 0.9 * 2.0 = 2.8   (new episode, bootstrapped at the rollout's end)
    # R_1 = 1                     (terminal: no bootstrap, R_2 does not flow back)
    # R_0 = 1 + 0.9 * 1   = 1.9
    assert_close(out.returns, col(1.9, 1.0, 2.8))
    assert_close(out.advantages, col(1.9 - 0.5, 1.0 - 0.4, 2.8 - 0.3))


def test_truncation_mid_rollout_bootstraps_from_final_obs_and_stops_recursion():
    """A truncation at t=1 bootstraps from next_values[1] = V(final obs), and R_2 does not flow back into R_1."""
    rewards = col(1.0, 1.0, 1.0)
    values = col(0.5, 0.4, 0.3)
    next_values = col(0.4, 5.0, 2.0)  # 5.0 = V(final observation of the truncated episode)
    out = targets_of(rewards, values, next_values, flags(0, 0, 0), flags(0, 1, 0))
    # R_2 = 1 + 0.9 * 2.0 = 2.8
    # R_1 = 1 + 0.9 * 5.0 = 5.5   (bootstrap from V(final obs); R_2 belongs to the next episode)
    # R_0 = 1 + 0.9 * 5.5 = 5.95
    assert_close(out.returns, col(5.95, 5.5, 2.8))
    assert_close(out.advantages, col(5.45, 5.1, 2.5))


def test_gae_lambda_095_three_steps():
    """GAE(lambda=0.95) on three steps matches the hand-computed recursion A_t = delta_t + gamma*lambda*A_{t+1}."""
    rewards = col(1.0, 0.0, 2.0)
    values = col(0.5, 0.4, 0.3)
    next_values = col(0.4, 0.3, 1.0)
    out = targets_of(rewards, values, next_values, flags(0, 0, 0), flags(0, 0, 0), gae_lambda=0.95)
    # delta_0 = 1 + 0.9*0.4 - 0.5 =  0.86
    # delta_1 = 0 + 0.9*0.3 - 0.4 = -0.13
    # delta_2 = 2 + 0.9*1.0 - 0.3 =  2.6
    # gamma * lambda = 0.855
    # A_2 = 2.6
    # A_1 = -0.13 + 0.855 * 2.6   = 2.093
    # A_0 =  0.86 + 0.855 * 2.093 = 2.649515
    assert_close(out.advantages, col(2.649515, 2.093, 2.6))
    # R_t = A_t + V(s_t)
    assert_close(out.returns, col(3.149515, 2.493, 2.9))


def test_batch_columns_are_independent():
    """Each of B=2 columns gets exactly the targets it would get alone (a terminal in one does not touch the other)."""
    a = (col(1.0, 0.0, 2.0), col(0.5, 0.4, 0.3), col(0.4, 0.3, 1.0), flags(0, 0, 0), flags(0, 0, 0))
    b = (col(1.0, 1.0, 1.0), col(0.5, 0.4, 0.3), col(0.4, 100.0, 2.0), flags(0, 1, 0), flags(0, 1, 0))
    both = [torch.cat([x, y], dim=1) for x, y in zip(a, b, strict=True)]
    out = targets_of(*both)
    alone_a, alone_b = targets_of(*a), targets_of(*b)
    assert_close(out.returns[:, :1], alone_a.returns)
    assert_close(out.returns[:, 1:], alone_b.returns)
    assert_close(out.advantages[:, :1], alone_a.advantages)
    assert_close(out.advantages[:, 1:], alone_b.advantages)
    # And the known answers: column 0 is the plain n-step case, column 1 the terminal case above.
    assert_close(out.returns, torch.tensor([[3.349, 1.9], [2.61, 1.0], [2.9, 2.8]]))


def _tiny_loss_inputs():
    # T=2, B=1, A=2. Step 0: logits (0, ln 3) -> pi = (1/4, 3/4); step 1: logits (0, 0) -> pi = (1/2, 1/2).
    logits = torch.tensor([[[0.0, math.log(3.0)]], [[0.0, 0.0]]], requires_grad=True)
    values = torch.tensor([[0.5], [1.5]], requires_grad=True)
    actions = torch.tensor([[1], [0]])
    advantages = torch.tensor([[2.0], [-1.0]], requires_grad=True)
    returns = torch.tensor([[1.0], [0.5]], requires_grad=True)
    return logits, values, actions, advantages, returns


def test_a3c_loss_terms_match_manual_formulas():
    """policy = -sum A log pi(a), value = 1/2 sum (R - V)^2, entropy bonus and total, on a hand-checked example."""
    logits, values, actions, advantages, returns = _tiny_loss_inputs()
    terms = a3c_loss(logits, values, actions, Targets(returns, advantages), entropy_coef=0.01, value_loss_coef=0.5)
    # policy = -(2 * ln 3/4 + (-1) * ln 1/2) = -2 ln 0.75 + ln 0.5 = 0.575364 - 0.693147 = -0.117783
    policy = -(2.0 * math.log(0.75) - 1.0 * math.log(0.5))
    # value = 1/2 * ((1 - 0.5)^2 + (0.5 - 1.5)^2) = 1/2 * (0.25 + 1) = 0.625
    value = 0.625
    # H_0 = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.562335; H_1 = ln 2 = 0.693147
    h0 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    h1 = math.log(2.0)
    # total = policy - 0.01 * (H_0 + H_1) + 0.5 * value = -0.117783 - 0.012555 + 0.3125 = 0.182162
    total = policy - 0.01 * (h0 + h1) + 0.5 * value
    assert_close(terms.policy, torch.tensor(policy))
    assert_close(terms.value, torch.tensor(value))
    assert_close(terms.entropy, torch.tensor((h0 + h1) / 2))  # reported as the mean entropy per step
    assert_close(terms.total, torch.tensor(total))
    assert_close(terms.total, torch.tensor(0.182162), atol=1e-5, rtol=0)


def test_a3c_loss_averages_over_envs():
    """Two identical env columns give the same loss as one: terms are summed over steps, averaged over B."""
    logits, values, actions, advantages, returns = _tiny_loss_inputs()
    one = a3c_loss(logits, values, actions, Targets(returns, advantages), 0.01, 0.5)
    two = a3c_loss(
        logits.repeat(1, 2, 1),
        values.repeat(1, 2),
        actions.repeat(1, 2),
        Targets(returns.repeat(1, 2), advantages.repeat(1, 2)),
        0.01,
        0.5,
    )
    for a, b in zip(one, two, strict=True):
        assert_close(a, b)


def test_a3c_loss_gradients_skip_targets():
    """total.backward() reaches logits and values but never the advantages or returns; the parts are detached."""
    logits, values, actions, advantages, returns = _tiny_loss_inputs()
    terms = a3c_loss(logits, values, actions, Targets(returns, advantages), entropy_coef=0.01, value_loss_coef=0.5)
    terms.total.backward()
    assert advantages.grad is None
    assert returns.grad is None
    # d total / d V_t = value_loss_coef * (V_t - R_t) = 0.5 * (0.5 - 1, 1.5 - 0.5) = (-0.25, 0.5)
    assert_close(values.grad, torch.tensor([[-0.25], [0.5]]))
    # d policy / d logits_t = -A_t (onehot(a_t) - pi_t); step 1 has pi = (1/2, 1/2) and zero entropy gradient:
    # -(-1) * ((1, 0) - (1/2, 1/2)) = (0.5, -0.5)
    assert_close(logits.grad[1, 0], torch.tensor([0.5, -0.5]))
    assert not (terms.policy.requires_grad or terms.value.requires_grad or terms.entropy.requires_grad)


@pytest.mark.parametrize("batch", [1, 3])
def test_the_hand_written_loss_gradient_is_autograds(batch: int):
    """a3c_loss_gradients (the worker's, in numpy) gives a3c_loss's terms and autograd's gradient at the logits and
    the values, with large logits (a nearly certain policy) among them."""
    torch.manual_seed(0)
    steps, actions_n = 7, 6
    logits = (torch.randn(steps, batch, actions_n) * 3).requires_grad_()
    with torch.no_grad():
        logits[2, 0, 4] = 40.0  # softmax must be taken stably
    values = torch.randn(steps, batch, requires_grad=True)
    actions = torch.randint(0, actions_n, (steps, batch))
    targets = Targets(torch.randn(steps, batch), torch.randn(steps, batch))
    want = a3c_loss(logits, values, actions, targets, entropy_coef=0.02, value_loss_coef=0.5)
    want.total.backward()
    got = a3c_loss_gradients(logits.detach().numpy(), values.detach().numpy(), actions.numpy(), targets, 0.02, 0.5)
    for a, b in zip(got.terms, want, strict=True):
        assert_close(a, b.detach(), rtol=1e-5, atol=1e-5)
    assert_close(torch.from_numpy(got.logits), logits.grad, rtol=1e-5, atol=1e-6)
    assert_close(torch.from_numpy(got.values), values.grad, rtol=1e-5, atol=1e-6)

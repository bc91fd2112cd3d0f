"""Shared optimizers: torch's maths, state in shared memory, the gradient hand-over, and a spawned child's step."""

from __future__ import annotations

import io
import sys

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.testing import assert_close

from a3c.config import Config
from a3c.shared_optim import (
    SharedAdam,
    SharedRMSprop,
    adam_moment_bound,
    find_damage,
    hand_over_gradients,
    scheduled_lr,
)

ADAM = {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6}
RMSPROP = {"lr": 1e-2, "alpha": 0.9, "eps": 0.1}
CASES = [(SharedAdam, torch.optim.Adam, ADAM), (SharedRMSprop, torch.optim.RMSprop, RMSPROP)]
IDS = ["adam", "rmsprop"]


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def state_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Every tensor in the optimizer's per-parameter state, named '<param index>.<key>'."""
    params = optimizer.param_groups[0]["params"]
    return {f"{i}.{key}": value for i, p in enumerate(params) for key, value in optimizer.state[p].items()}


@pytest.mark.parametrize(("shared_cls", "torch_cls", "kwargs"), CASES, ids=IDS)
def test_matches_torch_optimizer(shared_cls, torch_cls, kwargs):
    """Five steps of the same random gradients give the same parameters and statistics as torch's optimizer."""
    ours, ref = tiny_net(), tiny_net()
    opt_ours, opt_ref = shared_cls(ours.parameters(), **kwargs), torch_cls(ref.parameters(), **kwargs)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
            g = torch.randn(p.shape, generator=gen)
            p.grad, q.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_ref.step()
    for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
        assert_close(p, q)
    ref_state = state_tensors(opt_ref)
    assert state_tensors(opt_ours).keys() == ref_state.keys()
    for name, value in state_tensors(opt_ours).items():
        assert_close(value, ref_state[name], msg=name)
    assert all(float(v) == 5 for k, v in state_tensors(opt_ours).items() if k.endswith(".step"))


@pytest.mark.parametrize(("shared_cls", "torch_cls", "kwargs"), CASES, ids=IDS)
def test_state_is_in_shared_memory(shared_cls, torch_cls, kwargs):
    """Every state tensor, 'step' included, is in shared memory from construction on and after a step."""
    net = tiny_net()
    optimizer = shared_cls(net.parameters(), **kwargs)
    tensors = state_tensors(optimizer)
    assert any(k.endswith(".step") for k in tensors)
    assert all(t.is_shared() for t in tensors.values())
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    # torch updates the statistics in place, so the very same shared tensors hold the new values.
    after = state_tensors(optimizer)
    assert all(after[k] is tensors[k] for k in tensors)
    assert all(t.is_shared() for t in after.values())


@pytest.mark.parametrize(("shared_cls", "torch_cls", "kwargs"), CASES, ids=IDS)
def test_load_state_dict_then_share_memory(shared_cls, torch_cls, kwargs):
    """A state dict loaded from a file (private tensors) is shared again after share_memory(), values intact."""
    net = tiny_net()
    trained = shared_cls(net.parameters(), **kwargs)
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.5)
    trained.step()
    trained.step()
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    fresh = shared_cls(tiny_net(seed=1).parameters(), **kwargs)
    fresh.load_state_dict(saved)
    assert fresh.share_memory() is fresh
    tensors = state_tensors(fresh)
    assert all(t.is_shared() for t in tensors.values())
    for name, value in state_tensors(trained).items():
        assert_close(tensors[name], value, msg=name)
    assert all(float(v) == 2 for k, v in tensors.items() if k.endswith(".step"))


def test_hand_over_gradients_assigns_on_every_call():
    """Each hand-over points the shared .grad at the current local gradient, whether the shared .grad is set or None."""
    local, shared = tiny_net(), tiny_net()
    for p in local.parameters():
        p.grad = torch.full_like(p, 1.0)
    hand_over_gradients(local, shared)
    assert all(s.grad is p.grad for s, p in zip(shared.parameters(), local.parameters(), strict=True))

    # Second update, shared grads still set (the case the classic ensure_shared_grads returned early on).
    for p in local.parameters():
        p.grad = torch.full_like(p, 2.0)
    hand_over_gradients(local, shared)
    assert all(s.grad is p.grad for s, p in zip(shared.parameters(), local.parameters(), strict=True))

    # Third update after the shared grads were set to None (zero_grad's default since PyTorch 2).
    for s in shared.parameters():
        s.grad = None
    for p in local.parameters():
        p.grad = torch.full_like(p, 3.0)
    hand_over_gradients(local, shared)
    for s in shared.parameters():
        assert s.grad is not None
        assert_close(s.grad, torch.full_like(s, 3.0))


def test_optimizer_steps_with_each_handed_over_gradient():
    """Update, zero_grad, update: the shared optimizer's second step uses the second local gradient."""
    shared, local, ref = tiny_net(), tiny_net(seed=5), tiny_net()
    optimizer = SharedAdam(shared.parameters(), **ADAM)
    ref_optimizer = torch.optim.Adam(ref.parameters(), **ADAM)
    gen = torch.Generator().manual_seed(2)
    for _ in range(2):
        grads = [torch.randn(p.shape, generator=gen) for p in local.parameters()]
        for p, g in zip(local.parameters(), grads, strict=True):
            p.grad = g.clone()
        hand_over_gradients(local, shared)
        optimizer.step()
        optimizer.zero_grad()  # set_to_none=True: the shared .grad becomes None
        for q, g in zip(ref.parameters(), grads, strict=True):
            q.grad = g.clone()
        ref_optimizer.step()
        ref_optimizer.zero_grad()
    assert all(p.grad is None for p in shared.parameters())
    for p, q in zip(shared.parameters(), ref.parameters(), strict=True):
        assert_close(p, q)


def child_step(model: nn.Module, optimizer: SharedAdam) -> None:
    """Runs in a spawned child: one optimizer step with all-ones gradients on the shared model."""
    torch.set_num_threads(1)
    params = list(model.parameters())
    # The optimizer must step the very tensors the model holds, as the workers rely on.
    if not all(p is q for p, q in zip(params, optimizer.param_groups[0]["params"], strict=True)):
        raise SystemExit(3)
    if not all(p.is_shared() for p in params):
        raise SystemExit(4)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    if "torch._dynamo" in sys.modules:
        raise SystemExit(5)  # Optimizer.step's wrapper would have imported it: about 70 MB in every worker


@pytest.mark.multiprocess
def test_spawned_child_step_changes_parent_parameters_and_step():
    """A spawn-context child stepping SharedAdam on a share_memory()'d model updates the parent's weights and step,
    without importing torch._dynamo (exit status 5)."""
    model = tiny_net()
    model.share_memory()
    optimizer = SharedAdam(model.parameters(), **ADAM)
    before = [p.detach().clone() for p in model.parameters()]
    ctx = mp.get_context("spawn")
    child = ctx.Process(target=child_step, args=(model, optimizer), daemon=True)
    child.start()
    child.join(timeout=120)
    if child.is_alive():
        child.kill()
        child.join()
    assert child.exitcode == 0
    # Adam's first step with gradient 1 moves every weight by lr * 1 / (1 + eps), downhill.
    lr, eps = ADAM["lr"], ADAM["eps"]
    for p, b in zip(model.parameters(), before, strict=True):
        assert_close(p.detach(), b - lr / (1 + eps))
    for p in model.parameters():
        assert float(optimizer.state[p]["step"]) == 1.0
        assert_close(optimizer.state[p]["exp_avg"], torch.full_like(p, 1 - ADAM["betas"][0]))


def test_adam_steps_fused_after_loading_an_unfused_state():
    """A state saved by the single-tensor Adam (checkpoints before the fused step) loads, steps fused, same maths."""
    ours, ref = tiny_net(), tiny_net()
    old = torch.optim.Adam(ref.parameters(), **ADAM, foreach=False)
    for p in ref.parameters():
        p.grad = torch.full_like(p, 0.5)
    old.step()
    ours.load_state_dict(ref.state_dict())
    shared = SharedAdam(ours.parameters(), **ADAM)
    buffer = io.BytesIO()  # through a file, as from a checkpoint: a state dict in memory shares old's tensors
    torch.save(old.state_dict(), buffer)
    buffer.seek(0)
    shared.load_state_dict(torch.load(buffer, weights_only=True))
    assert all(group["fused"] for group in shared.param_groups)
    for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
        p.grad, q.grad = torch.full_like(p, -0.25), torch.full_like(q, -0.25)
    shared.step()
    old.step()
    for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
        assert_close(p, q)


def test_scheduled_lr_holds_then_falls_linearly_then_stays():
    """lr holds until lr_anneal_start, goes to lr_end in a straight line by lr_anneal_frames, then stays there;
    without lr_end it is constant."""
    cfg = Config(lr=2e-4, lr_end=5e-5, lr_anneal_frames=4_000_000).validate()
    assert scheduled_lr(cfg, 0) == 2e-4
    assert scheduled_lr(cfg, 1_000_000) == pytest.approx(1.625e-4)
    assert scheduled_lr(cfg, 4_000_000) == pytest.approx(5e-5)
    assert scheduled_lr(cfg, 9_000_000) == pytest.approx(5e-5)
    late = cfg.replace(lr_anneal_start=2_000_000).validate()
    assert scheduled_lr(late, 1_999_999) == 2e-4
    assert scheduled_lr(late, 3_000_000) == pytest.approx(1.25e-4)
    assert scheduled_lr(late, 5_000_000) == pytest.approx(5e-5)
    assert scheduled_lr(Config(lr=7e-4, lr_end=0.0, lr_anneal_frames=100), 50) == pytest.approx(3.5e-4)  # to 0
    assert scheduled_lr(Config(lr=2e-4), 1_000_000) == 2e-4


def test_adam_averages_from_one_stream_never_pass_their_bound():
    """Three thousand steps of gradients that are mostly zero, now and then huge or tiny (the pattern that leaves
    exp_avg_sq near zero): Adam's two averages stay within adam_moment_bound, and find_damage finds nothing."""
    net = nn.Linear(50, 40)
    optimizer = SharedAdam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3000):
        for p in net.parameters():
            scale = 10.0 ** float(torch.randint(-25, 2, (), generator=gen))
            p.grad = torch.randn(p.shape, generator=gen) * scale * (torch.rand(p.shape, generator=gen) < 0.05)
        optimizer.step()
    assert find_damage(net, optimizer) is None
    assert adam_moment_bound(0.9, 0.999) == pytest.approx(7.2703, abs=1e-4)


@pytest.mark.parametrize(
    ("poison", "found"),
    [
        ("weight", "non-finite weights in weight (1 of 6 values, first at [1, 2]: nan)"),
        ("exp_avg_sq", "non-finite optimizer statistic exp_avg_sq of bias (1 of 2 values, first at [0]: inf)"),
        (
            "torn",
            "Adam's averages of weight out of step with each other (a torn update) (1 of 6 values, first at [0, 0]: 1)",
        ),
    ],
)
def test_find_damage_names_what_is_wrong(poison: str, found: str):
    """A NaN weight, an infinite statistic, and a torn pair (exp_avg holding a gradient exp_avg_sq lacks) are each
    named, with how many values and the first one's index and value; a sound model gives None."""
    net = nn.Linear(3, 2)
    optimizer = SharedAdam(net.parameters(), lr=1e-3)
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert find_damage(net, optimizer) is None
    with torch.no_grad():
        if poison == "weight":
            net.weight[1, 2] = float("nan")
        elif poison == "exp_avg_sq":
            optimizer.state[net.bias]["exp_avg_sq"][0] = float("inf")
        else:
            optimizer.state[net.weight]["exp_avg"][0, 0] = 1.0
            optimizer.state[net.weight]["exp_avg_sq"][0, 0] = 0.0
    assert find_damage(net, optimizer) == found

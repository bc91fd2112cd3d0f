"""Optimizers whose statistics live in shared memory, the hand-over of a worker's gradients to them, and the check
that the shared weights and statistics are sound.

Every worker updates one set of statistics (step count included) and the shared parameters. The paper does this
lock-free (Hogwild); here the optimizer step itself holds a lock by default (--lock-step; docs/architecture.md
says why), while everything else a worker does with the shared model stays lock-free.
The maths is torch's own: the state is created eagerly, moved to shared memory, and torch's step updates it in place.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.adam import adam

from a3c.config import Config


def _create_state(optimizer: torch.optim.Optimizer, buffers: tuple[str, ...]) -> None:
    """Create torch's per-parameter state now (a float32 step and zeroed buffers) so it can live in shared memory."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            optimizer.state[p] = {"step": torch.zeros((), dtype=torch.float32)} | {
                name: torch.zeros_like(p, memory_format=torch.preserve_format) for name in buffers
            }
    _share_state(optimizer)


def _share_state(optimizer: torch.optim.Optimizer) -> None:
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                value.share_memory_()


class SharedAdam(torch.optim.Adam):
    """torch.optim.Adam with step, exp_avg and exp_avg_sq in shared memory.

    torch's fused CPU kernel: one pass over each tensor instead of a dozen (docs/benchmarks.md has the figures).
    It updates the shared tensors in place like the others.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 1e-4, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lr=lr, betas=betas, eps=eps, fused=True)
        _create_state(self, ("exp_avg", "exp_avg_sq"))

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        """torch's fused Adam step on the shared statistics, through torch's functional adam(). Optimizer.step's own
        wrapper imports torch._dynamo on its first call, which costs every worker process about 70 MB for nothing
        (docs/benchmarks.md); the maths is the same (tests/test_shared_optim.py holds the two equal)."""
        assert closure is None, "SharedAdam.step takes no closure"
        for group in self.param_groups:
            unsupported = [k for k in ("amsgrad", "maximize", "capturable", "differentiable") if group.get(k)]
            if unsupported or group.get("decoupled_weight_decay"):
                raise ValueError(f"SharedAdam steps plain Adam; these settings would be ignored: {unsupported}")
            params = [p for p in group["params"] if p.grad is not None]
            states = [self.state[p] for p in params]
            beta1, beta2 = group["betas"]
            adam(
                params,
                [p.grad for p in params],
                [state["exp_avg"] for state in states],
                [state["exp_avg_sq"] for state in states],
                [],
                [state["step"] for state in states],
                fused=True,
                amsgrad=False,
                beta1=beta1,
                beta2=beta2,
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=False,
            )

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's load, which also restores the saved kernel choice: a checkpoint from before the fused step would
        bring the slow one back, so the fused kernel is chosen again."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group.update(fused=True, foreach=None)

    def share_memory(self) -> SharedAdam:
        """Move the statistics to shared memory (again after load_state_dict, which makes fresh tensors)."""
        _share_state(self)
        return self


class SharedRMSprop(torch.optim.RMSprop):
    """torch.optim.RMSprop (the paper's choice: alpha 0.99, eps 0.1) with step and square_avg in shared memory."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 7e-4, alpha: float = 0.99, eps: float = 0.1):
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, foreach=False)
        _create_state(self, ("square_avg",))

    def share_memory(self) -> SharedRMSprop:
        """Move the statistics to shared memory (again after load_state_dict, which makes fresh tensors)."""
        _share_state(self)
        return self


def statistics(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor of the optimizer's state (step counts too), parameter by parameter in a fixed order: what a
    snapshot copies and a rollback puts back."""
    tensors = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            tensors += [state[key] for key in sorted(state) if torch.is_tensor(state[key])]
    return tensors


def scheduled_lr(cfg: Config, frames: int) -> float:
    """lr after `frames` emulator frames: cfg.lr until lr_anneal_start, then linear to lr_end, reached at
    lr_anneal_frames, then lr_end. Without lr_end, cfg.lr throughout."""
    if cfg.lr_end is None:
        return cfg.lr
    start, end = cfg.lr_anneal_start, cfg.lr_anneal_frames
    done = min(max(frames - start, 0) / (end - start), 1.0)
    return cfg.lr + (cfg.lr_end - cfg.lr) * done


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def make_optimizer(cfg: Config, params: Iterable[nn.Parameter]) -> SharedAdam | SharedRMSprop:
    """The shared optimizer named by --opt, with the run's settings."""
    if cfg.opt == "adam":
        return SharedAdam(params, lr=cfg.lr, betas=(cfg.adam_beta1, 0.999), eps=cfg.adam_eps)
    if cfg.opt == "rmsprop":
        return SharedRMSprop(params, lr=cfg.lr, alpha=cfg.rmsprop_alpha, eps=cfg.rmsprop_eps)
    raise ValueError(f"unknown optimizer {cfg.opt!r}")


def apply_settings(optimizer: torch.optim.Optimizer, cfg: Config) -> None:
    """Put the run's settings back after load_state_dict, which brings the saved run's lr, betas and eps with the
    statistics: the flags of this run win over the saved ones."""
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr
        if "betas" in group:
            group.update(betas=(cfg.adam_beta1, group["betas"][1]), eps=cfg.adam_eps)
        elif "alpha" in group:
            group.update(alpha=cfg.rmsprop_alpha, eps=cfg.rmsprop_eps)


def hand_over_gradients(local_model: nn.Module, shared_model: nn.Module) -> None:
    """Point each shared parameter's .grad at the local gradient, on every update.

    .grad is not shared between processes: it is this process's own attribute of the shared tensor, so assigning
    it is enough for this process's optimizer step to read it. The classic `ensure_shared_grads` returned early
    when the shared .grad already existed; since PyTorch 2 zero_grad() sets .grad to None, and an early return
    leaves the optimizer stepping with stale or missing gradients. Here the assignment is unconditional. A local
    model on another device (--device cuda) hands over a copy in the shared model's memory.
    """
    for shared, local in zip(shared_model.parameters(), local_model.parameters(), strict=True):
        grad = local.grad
        shared.grad = grad if grad is None or grad.device == shared.device else grad.to(shared.device)


def adam_moment_bound(beta1: float, beta2: float) -> float:
    """The largest |exp_avg| / sqrt(exp_avg_sq) Adam's two averages can reach when both come from the same
    gradients (Cauchy-Schwarz over the geometric weights): (1 - b1) / sqrt((1 - b2) (1 - b1^2 / b2)), 7.27 for torch's
    default betas. It bounds every step at about lr x 7.27 whatever the gradients. Only a torn pair (one average
    holding a gradient the other lacks) can exceed it, and then a step can be up to lr x |exp_avg| / eps."""
    return (1 - beta1) / math.sqrt((1 - beta2) * (1 - beta1**2 / beta2))


def find_damage(model: nn.Module, optimizer: torch.optim.Optimizer) -> str | None:
    """What is wrong with the shared weights or optimizer statistics, in a few words, or None when all is sound:
    a non-finite weight or statistic, or an Adam pair past adam_moment_bound (measured against sqrt(exp_avg_sq)
    + eps, as the step divides by it, with 1% slack for float32 rounding)."""
    names = {p: name for name, p in model.named_parameters()}

    def where(bad: torch.Tensor, values: torch.Tensor) -> str:
        # How many values, where and what: one stray value and a whole row of a gradient's product point to
        # different causes, and so do inf (an overflow) and nan (docs/reliability.md, "Damaged shared weights").
        first = tuple(int(i) for i in bad.nonzero()[0]) if bad.dim() else ()
        return f"({int(bad.sum()):,} of {bad.numel():,} values, first at {list(first)}: {float(values[first]):.4g})"

    with torch.no_grad():
        for p, name in names.items():
            # One look (a copy), then describe that look: workers and a rollback may change p between two looks.
            look = p.clone()
            bad = ~torch.isfinite(look)
            if bad.any():
                return f"non-finite weights in {name} {where(bad, look)}"
        for group in optimizer.param_groups:
            bound = adam_moment_bound(*group["betas"]) * 1.01 if "betas" in group else None
            for p in group["params"]:
                state = optimizer.state.get(p, {})
                for key, value in state.items():
                    look = value.clone() if torch.is_tensor(value) else None
                    bad = None if look is None else ~torch.isfinite(look)
                    if bad is not None and bad.any():
                        return f"non-finite optimizer statistic {key} of {names.get(p, '?')} {where(bad, look)}"
                if bound is not None and "exp_avg" in state:
                    torn = state["exp_avg"].abs() > bound * (state["exp_avg_sq"].sqrt() + group["eps"])
                    if torn.any():
                        return (
                            f"Adam's averages of {names.get(p, '?')} out of step with each other (a torn update) "
                            f"{where(torn, state['exp_avg'])}"
                        )
    return None

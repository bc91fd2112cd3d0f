"""Optimizers whose statistics live in shared memory, and the hand-over of a worker's gradients to them.

As in the paper, every worker updates one set of statistics (step count included) and the shared parameters,
lock-free (Hogwild): two workers may interleave their updates, which the paper found harmless.
The maths is torch's own: the state is created eagerly, moved to shared memory, and torch's step updates it in place.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

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


def make_optimizer(
    name: str, params: Iterable[nn.Parameter], lr: float, adam_eps: float, rmsprop_alpha: float, rmsprop_eps: float
):
    """The shared optimizer named by --opt."""
    if name == "adam":
        return SharedAdam(params, lr=lr, eps=adam_eps)
    if name == "rmsprop":
        return SharedRMSprop(params, lr=lr, alpha=rmsprop_alpha, eps=rmsprop_eps)
    raise ValueError(f"unknown optimizer {name!r}")


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

"""The trainer's start-up check: which learner a run uses, decided once, before any worker is spawned.

The tape must refuse a network, never differentiate it wrongly. Its allow-list (tape_refusal) says which layers
and structure it knows; this check then runs both learners over a short dummy rollout on the network with its
weights perturbed (and restored after), and takes the tape only where its forward passes equal ActorCritic.forward and its gradients
equal autograd's. An edit to model.py that the tape does not replay fails here, whatever it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from a3c.config import Config, ConfigError
from a3c.learners.autograd import AutogradLearner
from a3c.learners.base import Learner, Rollout
from a3c.learners.tape import Tape, tape_refusal
from a3c.model import ActorCritic

CHECK_STEPS = 5  # the dummy rollout: an episode begins at step 2 of game 0
# Of each tensor's largest entry: float32 sums in another order differ by under 2e-5 on the shipped networks.
RTOL = 2e-4


def make_learner(name: str, model: ActorCritic, steps: int, batch: int) -> Learner:
    """The learner named by a resolved cfg.learner ('tape' or 'autograd', never 'auto': see choose_learner)."""
    if name == "tape":
        return Tape(model, steps, batch)
    if name == "autograd":
        return AutogradLearner(model, steps, batch)
    raise ValueError(f"learner {name!r} is not resolved: the trainer picks 'tape' or 'autograd' (choose_learner)")


def choose_learner(cfg: Config, model: ActorCritic) -> tuple[str, str]:
    """(learner, reason) for cfg.learner, 'auto' resolved. ConfigError where the network's forward_rollout does not
    compute what its forward does (any learner would mislearn), or an explicit 'tape' cannot train it."""
    mismatch = _rollout_mismatch(model)
    if mismatch is not None:
        raise ConfigError(
            f"ActorCritic.forward_rollout does not compute what stepping ActorCritic.forward does ({mismatch}): "
            "change both together in a3c/model.py"
        )
    if cfg.learner == "autograd":
        return "autograd", "as asked"
    if cfg.fresh_gradients:
        return "autograd", "--fresh-gradients recomputes each rollout at the new weights"
    why = tape_refusal(model)
    if why is None and torch.device(cfg.device).type != "cpu":
        why = f"it runs on the CPU and --device is {cfg.device}"
    if why is None:
        try:
            why = _tape_mismatch(model, min(cfg.rollout_len, CHECK_STEPS), min(cfg.envs_per_worker, 2))
        except Exception as error:  # a network the allow-list let through but the tape cannot run: refused
            first = (str(error).strip().splitlines() or [""])[0][:200]
            why = f"it failed on a dummy rollout ({type(error).__name__}: {first})"
    if why is None:
        return "tape", "it replays this network's gradients exactly" if cfg.learner == "auto" else "as asked"
    if cfg.learner == "tape":
        raise ConfigError(f"--learner tape cannot train this network: {why}; use --learner autograd (or auto)")
    return "autograd", f"the tape cannot: {why}"


@contextlib.contextmanager
def _perturbed(model: ActorCritic, generator: torch.Generator) -> Iterator[ActorCritic]:
    """The model with every weight moved by noise of its own size, so that no check passes on an initial value
    (zero biases, a near-zero policy head) that hides a missing term; its weights, mode and gradients are restored
    after. In place rather than on a copy: not every module can be deep-copied (weight_norm's cannot)."""
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    training = model.training
    try:
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn(p.shape, generator=generator).to(p.device) * (p.abs().mean() + 0.05))
        yield model
    finally:
        with torch.no_grad():
            for p, value in zip(params, saved, strict=True):
                p.copy_(value)
        model.train(training)
        model.zero_grad(set_to_none=True)


def _dummy_inputs(model: ActorCritic, steps: int, batch: int, generator: torch.Generator):
    if model.is_image:
        obs = torch.randint(0, 256, (steps + 1, batch, *model.obs_shape), dtype=torch.uint8, generator=generator)
    else:
        obs = torch.randn(steps + 1, batch, *model.obs_shape, generator=generator)
    resets = torch.zeros(steps + 1, batch)
    if steps >= 3:
        resets[2, 0] = 1.0
    state = tuple(torch.randn(batch, model.hidden_size, generator=generator) for _ in range(2))
    return obs, resets, state


def _record(learner: Learner, obs: torch.Tensor, resets: torch.Tensor, state, generator: torch.Generator):
    """Step the learner through a dummy rollout; returns its outputs at each step and the Rollout."""
    steps, batch = resets.shape[0] - 1, resets.shape[1]
    recording = learner.start()
    outputs = []
    with torch.inference_mode():
        h, c = state
        for t in range(steps + 1):
            keep = (1.0 - resets[t]).unsqueeze(1)
            out = learner.step(t, obs[t], (h * keep, c * keep))
            outputs.append(out)
            h, c = out.state
    terminated = torch.zeros(steps, batch, dtype=torch.bool)
    terminated[:-1] = resets[1:-1].bool()
    actions = torch.randint(0, learner.model.num_actions, (steps, batch), generator=generator)
    rollout = Rollout(
        obs=obs,
        actions=actions,
        rewards=torch.randn(steps, batch, generator=generator),
        terminated=terminated,
        episode_ends=terminated.clone(),
        truncated=torch.zeros(steps, batch, dtype=torch.bool),
        truncation_values=torch.zeros(steps, batch),
        resets=resets,
        state=state,
        bootstrap_values=outputs[-1].value.clone(),
        recording=recording,
    )
    return outputs, rollout


def _differs(got: torch.Tensor, want: torch.Tensor) -> bool:
    scale = float(want.abs().max()) if want.numel() else 0.0
    return not torch.allclose(got, want, rtol=RTOL, atol=RTOL * scale + 1e-7)


def _tape_mismatch(model: ActorCritic, steps: int, batch: int) -> str | None:
    """Where the tape's forward passes or gradients differ from autograd's on a dummy rollout, or None."""
    cfg = Config()  # the loss's coefficients: any will do
    generator = torch.Generator().manual_seed(0)
    gradients, all_outputs = [], []
    with _perturbed(model, generator) as network:
        obs, resets, state = _dummy_inputs(network, steps, batch, generator)
        for learner in (Tape(network, steps, batch), AutogradLearner(network, steps, batch)):
            outputs, rollout = _record(learner, obs, resets, state, torch.Generator().manual_seed(1))
            network.zero_grad(set_to_none=True)
            learner.backward(rollout, cfg)
            gradients.append({name: p.grad for name, p in network.named_parameters()})
            all_outputs.append(outputs)
    for t, (got, want) in enumerate(zip(*all_outputs, strict=True)):
        for what, a, b in zip(
            ("logits", "value", "h", "c"), (got[0], got[1], *got[2]), (want[0], want[1], *want[2]), strict=True
        ):
            if _differs(a, b):
                return f"its forward pass differs from ActorCritic.forward ({what} at step {t})"
    tape_grads, autograd_grads = gradients
    for name, want in autograd_grads.items():
        if tape_grads[name] is None:
            return f"it computes no gradient for {name}"
        if _differs(tape_grads[name], want):
            return f"its gradient of {name} differs from autograd's"
    return None


def _rollout_mismatch(model: ActorCritic, steps: int = CHECK_STEPS, batch: int = 2) -> str | None:
    """Where forward_rollout's logits and values differ from stepping forward() (in eval mode, so that dropout and
    the like draw nothing), or None."""
    generator = torch.Generator().manual_seed(2)
    with _perturbed(model, generator) as network, torch.no_grad():
        network.eval()
        obs, resets, state = _dummy_inputs(network, steps, batch, generator)
        logits, values = network.forward_rollout(obs, state, resets)
        h, c = state
        for t in range(steps + 1):
            keep = (1.0 - resets[t]).unsqueeze(1)
            out = network(obs[t], (h * keep, c * keep))
            h, c = out.state
            if _differs(logits[t], out.logits) or _differs(values[t], out.value):
                return f"step {t}"
    return None

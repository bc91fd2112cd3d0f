"""One A3C worker: sync weights, run a rollout, compute the loss, hand gradients to the shared model, repeat."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

from a3c.config import Config
from a3c.envs import frames_per_step, make_env
from a3c.learners import Rollout, make_learner
from a3c.losses import LossTerms
from a3c.messages import GameResult, WorkerStats
from a3c.model import build_model, sample_actions
from a3c.processes import Outbox, SharedState, child_process, trainer_alive
from a3c.shared_optim import hand_over_gradients, scheduled_lr, set_lr

STATS_INTERVAL_S = 5.0
FRAMES, UPDATES, SKIPPED = 0, 1, 2  # the columns of a worker's counter row (processes.Counters)


class Worker:
    """The A3C loop for one rank, over cfg.envs_per_worker games stepped in lockstep (1 = the paper's)."""

    def __init__(self, rank: int, cfg: Config, shared: SharedState, outbox: Outbox):
        self.rank = rank
        self.cfg = cfg
        self.shared = shared
        self.outbox = outbox
        self.counts = shared.counters.row(rank)  # this worker's own row: it alone writes it
        self.shared_params = list(shared.model.parameters())
        # Gradients are handed to shared_model.parameters(); the optimizer must step those very tensors.
        assert all(p is q for p, q in zip(self.shared_params, shared.optimizer.param_groups[0]["params"], strict=True))
        torch.manual_seed(cfg.seed + rank)
        num = cfg.envs_per_worker
        self.envs = [make_env(cfg, seed=cfg.seed + rank * num + k) for k in range(num)]
        self.frame_skip = frames_per_step(cfg)
        model = shared.model
        local_model, _ = build_model(cfg, model.obs_shape, model.num_actions)
        self.model = local_model.to(cfg.device)
        self.params = list(self.model.parameters())
        self.learner = make_learner(cfg.learner, self.model, cfg.rollout_len, num)
        dtype = torch.uint8 if self.model.is_image else torch.float32
        self.obs = torch.empty((cfg.rollout_len + 1, num, *model.obs_shape), dtype=dtype)
        for k, env in enumerate(self.envs):
            first, _ = env.reset(seed=cfg.seed + rank * num + k)
            self.obs[-1, k] = torch.from_numpy(np.asarray(first))
        self.state = tuple(s.to(cfg.device) for s in self.model.initial_state(num))
        self.rng = np.random.default_rng(cfg.seed + rank)
        self.seconds = dict.fromkeys(("env", "inference", "learn", "sync", "waiting"), 0.0)
        self.agent_steps = 0
        self.last_stats = time.perf_counter()
        self.loss_sums = dict.fromkeys(("policy_loss", "value_loss", "entropy", "staleness"), 0.0)
        self.loss_count = 0
        self.synced_updates = 0  # the shared update count when the local weights were last copied

    def sync(self) -> None:
        """Copy the shared weights into the local model (the paper's 'synchronize thread-specific parameters')."""
        self.synced_updates = self.shared.counters.updates()
        with torch.no_grad():
            for local, shared in zip(self.params, self.shared_params, strict=True):
                local.copy_(shared)

    def collect(self) -> Rollout:
        """Run rollout_len steps in every env under inference mode, sampling actions from the policy; the learner
        records the forward passes for the update."""
        cfg, num, steps = self.cfg, len(self.envs), self.cfg.rollout_len
        obs = self.obs
        obs[0] = obs[-1]  # the last rollout's bootstrap observation is this one's first
        state = (self.state[0].clone(), self.state[1].clone())
        actions = torch.zeros(steps, num, dtype=torch.int64)
        rewards = torch.zeros(steps, num)
        terminated = torch.zeros(steps, num, dtype=torch.bool)
        truncated = torch.zeros(steps, num, dtype=torch.bool)
        truncation_values = torch.zeros(steps, num)
        resets = torch.zeros(steps + 1, num)  # resets[0] stays 0: the carried-over state was zeroed when it ended
        # The per-step writes go through numpy views of the same memory: a numpy item write skips torch's indexing
        # machinery, and there are several per step.
        obs_np, actions_np, rewards_np = obs.numpy(), actions.numpy(), rewards.numpy()
        terminated_np, truncated_np, resets_np = terminated.numpy(), truncated.numpy(), resets.numpy()
        env_s = inference_s = 0.0
        clock = time.perf_counter
        recording = self.learner.start()
        learner = self.learner
        with torch.inference_mode():
            h, c = self.state
            for t in range(steps):
                t0 = clock()
                logits, _, (h, c) = learner.step(t, obs[t], (h, c))
                action = sample_actions(logits, self.rng)
                actions_np[t] = action
                t1 = clock()
                inference_s += t1 - t0
                for k, env in enumerate(self.envs):
                    next_obs, reward, term, trunc, info = env.step(int(action[k]))
                    rewards_np[t, k] = reward
                    life_lost = cfg.terminal_on_life_loss and info.get("life_lost", False)
                    terminated_np[t, k] = term or life_lost
                    if term or trunc:
                        if trunc and not term:
                            # A time limit is not a terminal: bootstrap from the final observation (Pardo et al. 2018).
                            final = torch.from_numpy(np.asarray(next_obs)).unsqueeze(0)
                            truncation_values[t, k] = float(learner.value(final, (h[k : k + 1], c[k : k + 1]))[0])
                            truncated_np[t, k] = True
                        self._report_game(k, info, frames_done=(t + 1) * num * self.frame_skip)
                        next_obs, _ = env.reset()
                        h[k] = 0.0
                        c[k] = 0.0
                        resets_np[t + 1, k] = 1.0
                    obs_np[t + 1, k] = next_obs
                env_s += clock() - t1
            self.state = (h, c)
            t0 = clock()
            bootstrap_values = learner.step(steps, obs[steps], (h, c)).value.cpu().clone()
            inference_s += clock() - t0
        self.seconds["env"] += env_s
        self.seconds["inference"] += inference_s
        self.agent_steps += steps * num
        episode_ends = terminated | truncated
        return Rollout(
            obs,
            actions,
            rewards,
            terminated,
            episode_ends,
            truncated,
            truncation_values,
            resets,
            state,
            bootstrap_values,
            recording,
        )

    def _report_game(self, k: int, info: dict, frames_done: int) -> None:
        episode = info.get("episode")
        if episode is None:
            return
        frames = self.shared.counters.frames() + frames_done
        self.outbox.send(GameResult(self.rank, float(episode["r"]), int(episode["l"]), int(frames)))

    def update(self, rollout: Rollout) -> LossTerms | None:
        """The learner's gradients of the rollout's loss, clipped, stepped by the shared optimizer. None if the
        update was skipped."""
        cfg = self.cfg
        for p in self.params:
            p.grad = None
        if cfg.fresh_gradients:
            t0 = time.perf_counter()
            self.sync()  # the gradient at the shared weights of now (Config.fresh_gradients says why)
            self.seconds["sync"] += time.perf_counter() - t0
        loss = self.learner.backward(rollout, cfg)
        # clip_grad_norm_'s maths, without its pass over every gradient when the norm is already within the limit
        # (nearly always: Pong's norms run 2-30 against 40).
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params])
        if grad_norm > cfg.max_grad_norm:
            torch.nn.utils.clip_grads_with_norm_(self.params, cfg.max_grad_norm, grad_norm)
        if not (torch.isfinite(loss.total) and torch.isfinite(grad_norm)):
            # A non-finite update would poison the shared model for every worker: drop it and count it.
            self.counts[SKIPPED] += 1
            return None
        hand_over_gradients(self.model, self.shared.model)
        set_lr(self.shared.optimizer, scheduled_lr(cfg, self.shared.counters.frames()))  # cfg.lr without a schedule
        with self.shared.step_lock.held() if cfg.lock_step else contextlib.nullcontext(True):
            self.shared.optimizer.step()
            # Counted as it lands, so that a sync after it sees it. Staleness: how many updates the shared weights
            # took between the copy this gradient was taken at and this step, the other workers' (about
            # n_workers - 1 a rollout; fewer with fresh_gradients).
            self.loss_sums["staleness"] += self.shared.counters.updates() - self.synced_updates
            self.counts[UPDATES] += 1
        for p in self.shared_params:
            p.grad = None
        return loss

    def train_step(self) -> LossTerms | None:
        """One A3C iteration: sync, collect, update (which counts itself), and count the frames and the losses."""
        clock = time.perf_counter
        t0 = clock()
        self.sync()
        t1 = clock()
        rollout = self.collect()
        t2 = clock()
        loss = self.update(rollout)
        t3 = clock()
        self.counts[FRAMES] += self.cfg.rollout_len * len(self.envs) * self.frame_skip
        if loss is not None:
            self.loss_sums["policy_loss"] += float(loss.policy)
            self.loss_sums["value_loss"] += float(loss.value)
            self.loss_sums["entropy"] += float(loss.entropy)
            self.loss_count += 1
        t4 = clock()
        self.seconds["sync"] += t1 - t0
        self.seconds["learn"] += t3 - t2
        self.seconds["waiting"] += t4 - t3
        if t4 - self.last_stats >= STATS_INTERVAL_S:
            count = self.loss_count
            losses = {k: v / count for k, v in self.loss_sums.items()} | {"updates": count} if count else {}
            self.outbox.send(WorkerStats(self.rank, self.agent_steps, dict(self.seconds), losses))
            self.loss_sums = dict.fromkeys(self.loss_sums, 0.0)
            self.loss_count = 0
            self.last_stats = t4
        return loss

    def keep_going(self) -> bool:
        """False once the run is stopping or the trainer is gone."""
        return not self.shared.stop.is_set() and trainer_alive()

    def run(self) -> None:
        """Train until the stop event is set or the parent dies."""
        while self.keep_going():
            self.train_step()

    def close(self) -> None:
        for env in self.envs:
            env.close()


def run_worker(rank: int, cfg: Config, shared: SharedState, outbox: Outbox) -> None:
    """Entry point of a worker process: outbox is its own end of a pipe to the trainer."""
    with child_process(rank, outbox):
        shared.step_lock.open()
        worker = Worker(rank, cfg, shared, outbox)
        try:
            worker.run()
        finally:
            worker.close()

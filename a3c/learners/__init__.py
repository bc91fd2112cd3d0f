"""How a worker gets its gradients, behind one interface (Learner in base.py):

- autograd.py: ActorCritic.forward for the rollout, forward_rollout + a3c_loss + backward() for the update. Any
  network model.py can build, on any device: the reference.
- tape.py: the same gradients replayed by hand from what the rollout's forward passes recorded. The fast CPU path,
  for the layers it knows (one small class per layer kind).
- check.py: the trainer's start-up choice between them (--learner auto|autograd|tape), made once per run.
"""

from a3c.learners.base import Learner, Rollout, rollout_targets
from a3c.learners.check import choose_learner, make_learner

__all__ = ["Learner", "Rollout", "choose_learner", "make_learner", "rollout_targets"]

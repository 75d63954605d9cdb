"""Meta-learning: the loss, the inner loop every learner shares, one file per learner's update,
and the outer training loop with its checkpoints."""

# The learners register themselves and their starts' kinds: importing any part of meta registers
# them all, so a start of any kind reads from Python (start.read) without its learner imported first.
from . import config  # noqa: F401

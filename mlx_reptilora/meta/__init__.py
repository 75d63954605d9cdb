"""Meta-learning: the loss, the inner loop every learner shares, one file per learner's update,
and the outer training loop with its checkpoints."""

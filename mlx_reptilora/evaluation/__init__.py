"""From a start to a score: k-shot adaptation, evaluation by each task's metric, and the side-by-side comparison."""

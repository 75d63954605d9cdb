"""From a start to a score: k-shot adaptation, ROUGE evaluation, and the side-by-side comparison."""

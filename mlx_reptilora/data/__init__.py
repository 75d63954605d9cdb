"""Tasks → prompts → episodes and batches: everything before a model sees a token."""

"""The same algorithms in PyTorch + PEFT, run beside the MLX code on the same batches."""

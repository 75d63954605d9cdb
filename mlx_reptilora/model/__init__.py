"""The frozen base model (loading, GGUF conversion, quantization), the LoRA adapters on it, and the
device it runs on. Kept free of imports: `_blas` must load before anything imports mlx.core."""

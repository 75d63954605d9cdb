"""ReptiLoRA in MLX: meta-learn a LoRA initialisation that adapts to a new task from a few examples."""

from .model import _blas

_blas.preload()  # before anything imports mlx.core: see _blas.py

__version__ = "0.1.0"

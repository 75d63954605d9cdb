"""Make MLX's Linux CPU backend use an optimized BLAS.

The `mlx-cpu` wheel links a reference BLAS (~5 GFLOP/s fp32 matmul on a 2-core x86 machine) but
imports `cblas_sgemm` as an undefined dynamic symbol, so an OpenBLAS loaded into the global symbol
scope *before* `mlx.core` is imported wins symbol resolution (~90-140 GFLOP/s, results equal to
numpy's). This module must not import mlx: `mlx_reptilora/__init__.py` calls `preload()` first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV_VAR = "MLX_REPTILORA_BLAS"  # a path to a BLAS .so, or "none" to keep MLX's own

# Debian/Ubuntu (libopenblas0-pthread), Fedora/RHEL (openblas), Arch; find_library covers the rest.
_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblasp.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

# What happened, for `mlx-reptilora info`: path loaded, or why none was.
status: dict = {"blas": None, "reason": "not attempted"}


def _find() -> str | None:
    for path in _CANDIDATES:
        if os.path.exists(path):
            return path
    return ctypes.util.find_library("openblas")


def preload() -> dict:
    if status["reason"] != "not attempted":
        return status
    if not sys.platform.startswith("linux"):
        status.update(reason="not needed (macOS uses Accelerate)")
        return status
    if "mlx.core" in sys.modules:
        status.update(reason="mlx was imported before mlx_reptilora; the bundled reference BLAS is in use")
        return status
    wanted = os.environ.get(ENV_VAR)
    if wanted and wanted.lower() == "none":
        status.update(reason=f"disabled by {ENV_VAR}=none")
        return status
    path = wanted or _find()
    if path is None:
        status.update(reason="no OpenBLAS found (Debian/Ubuntu: apt-get install libopenblas0-pthread)")
        return status
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        lib.cblas_sgemm  # noqa: B018 -- fails if this is not a CBLAS
    except (OSError, AttributeError) as e:
        status.update(reason=f"could not load {path}: {e}")
        return status
    status.update(blas=path, reason="preloaded")
    return status

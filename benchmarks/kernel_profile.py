"""Which GPU kernels a step spends its time in: CUPTI's record of every kernel the process runs,
read through PyTorch's profiler (it records MLX's kernels too: the tracing is per process, not per
library). `python -m benchmarks.step_breakdown --profile` writes one table per variant.

A kernel's time is its span on the GPU; "busy" is their sum per step, and what the step's wall
time has beyond it is the GPU waiting on the host (launches, syncs) or on nothing.
"""

from __future__ import annotations

import re

# first match wins; the names are CUDA's demangled kernel names (cuBLAS/cuDNN's and MLX's own)
FAMILIES = [
    ("matmul", r"gemm|cutlass|nvjet|sm\d\d_xmma|cublas|matmul"),
    ("attention", r"flash|fmha|sdpa|attention|cudnn"),
    ("norm / softmax / reduction", r"rms|norm|softmax|reduce|logsumexp|cross_entropy"),
    ("dequantize", r"dequantize"),
    ("rope", r"rope"),
    # mx.compile's fused kernels: their names spell the ops they fuse (...IMultiplyB...IAsType..._<hash>)
    ("fused elementwise (mx.compile)", r"mlx::core::cu::\w*(?:v2|f4|b1)i\w*_\d{8,}"),
    ("copy / cast / gather", r"copy|gather|scatter|astype|concatenate|slice|memcpy|memset"),
    ("random", r"random|bernoulli|threefry|rbits"),
    ("elementwise", r"binary|unary|ternary|compiled|fused|arange|where|select"),
]


def family(name: str) -> str:
    low = name.lower()
    return next((f for f, pattern in FAMILIES if re.search(pattern, low)), "other")


def check() -> None:
    """One line, before any work, where the profile cannot run."""
    try:
        import torch
    except ImportError:
        raise SystemExit("--profile reads CUPTI through PyTorch's profiler: install torch (a CUDA build)") from None
    if not torch.cuda.is_available():
        raise SystemExit("--profile needs an NVIDIA GPU and a CUDA build of PyTorch (CUPTI records the kernels)")


def profile(step, steps: int = 3) -> list[dict]:
    """Run `step` `steps` times under the profiler: [{name, family, calls, ms}] per step, longest first."""
    import torch
    from torch.profiler import ProfilerActivity

    with torch.profiler.profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
    spans: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            spans.setdefault(e.name, []).append((e.time_range.end - e.time_range.start) / 1e3)
    return summarise(spans, steps)


def summarise(spans: dict[str, list[float]], steps: int) -> list[dict]:
    """{kernel name: [ms of each launch]} over `steps` steps -> rows per step, longest first."""
    rows = [{"name": n, "family": family(n), "calls": len(v) / steps, "ms": sum(v) / steps} for n, v in spans.items()]
    return sorted(rows, key=lambda r: -r["ms"])


def families(rows: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in rows:
        out[r["family"]] = out.get(r["family"], 0.0) + r["ms"]
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def markdown(variant: str, rows: list[dict], step_s: float, top: int = 25) -> str:
    busy = sum(r["ms"] for r in rows)
    wall = step_s * 1e3
    lines = [f"### {variant}", "",
             f"GPU busy {busy:.1f} ms of a {wall:.1f} ms step ({busy / wall:.0%}); {sum(r['calls'] for r in rows):.0f} "
             f"kernel launches a step", "", "| family | ms / step | share of busy |", "| --- | ---: | ---: |"]
    lines += [f"| {f} | {ms:.2f} | {ms / busy:.1%} |" for f, ms in families(rows).items()]
    lines += ["", "| kernel | family | calls / step | ms / step | share of busy |", "| --- | --- | ---: | ---: | ---: |"]
    for r in rows[:top]:
        name = r["name"] if len(r["name"]) <= 90 else r["name"][:87] + "..."
        lines.append(f"| `{name.replace('|', '/')}` | {r['family']} | {r['calls']:g} | {r['ms']:.3f} | {r['ms'] / busy:.1%} |")
    return "\n".join(lines) + "\n"

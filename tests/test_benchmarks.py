"""The benchmark runner's quick mode (what CI runs so the benchmarks cannot rot): every measurement
runs on a tiny random Llama, in both frameworks, and the report files come out."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quick_mode_writes_every_measurement(tmp_path):
    pytest.importorskip("torch")
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["matmul_peak"]["tflops"] > 0
    assert [(row["shape"], row["precision"]) for row in res["rows"]] == [("tiny", "float"), ("tiny", "4bit"),
                                                                    ("tiny", "4bit-dense")]
    mlx, torch = res["rows"][0]["mlx"], res["rows"][0]["torch"]
    for key in ("step_tok_s", "episode_tok_s", "meta_overhead", "first_step_s", "adapt_s", "gen_tok_s",
                "full_ft_step_s", "step_peak_gb"):
        assert mlx[key] > 0, key
    for key in ("step_tok_s", "adapt_s", "gen_tok_s", "full_ft_step_s"):
        assert torch[key] > 0, key
    assert "bitsandbytes" in res["rows"][1]["torch"]["skipped"]
    assert len(res["sweep"]) == 3 and (tmp_path / "sweep.png").stat().st_size > 0
    table = (tmp_path / "results.md").read_text()
    assert "| tiny | float (float32) |" in table and "x |" in table


def test_step_breakdown_measures_every_variant(tmp_path):
    from benchmarks.step_breakdown import VARIANTS

    # every option of a variant, in fewer variants than a GPU run measures
    chosen = ["grad only", "no dropout", "bf16 adapters", "grad checkpoint", "mlx-lm stock",
              "memory limit + swiglu recompute + lora in base dtype", "fused lora", "4bit", "4bit dense limited",
              "4bit library defaults", "4bit dense at need x1.1 + swiglu recompute + lora in base dtype"]
    assert {k for v in chosen for k in VARIANTS[v]} == {k for v in VARIANTS.values() for k in v}
    r = subprocess.run([sys.executable, "-m", "benchmarks.step_breakdown", "--shape", "tiny", "--batch", "2",
                        "--length", "32", "--repeats", "1", "--variants", ",".join(chosen), "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "breakdown.json").read_text())
    assert [row["variant"] for row in res["rows"]] == chosen
    assert all(row["tok_s"] > 0 and "failed" not in row for row in res["rows"])
    assert "| mlx-lm stock |" in (tmp_path / "breakdown.md").read_text()
    assert res["rows"][-1]["need_gb"] > 0


def test_the_kernel_profile_groups_launches_by_family_and_needs_a_gpu(tmp_path):
    from benchmarks import kernel_profile, step_breakdown

    spans = {"nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_TNT": [2.0, 2.0, 2.0, 2.0],
             "cudnn_generated_fort_native_sdpa_sm90_flash_fprop": [1.0, 1.0],
             "rms_norm_vjp_kernel<__nv_bfloat16>": [0.5, 0.5],
             "fused_Multiply_Sigmoid_Add_bfloat16": [1.0, 1.0, 1.0, 1.0],
             "some_kernel_nobody_named": [0.25, 0.25]}
    assert kernel_profile.family("void mlx::core::cu::Cf4IAsTypeADf4IBroadcastBEb1ILessCDFV2OAsTypeE_VS_u4f4_"
                                 "6142509188972423790_contiguous<unsigned int, 8>(unsigned int const*)") \
        == "fused elementwise (mx.compile)"
    assert kernel_profile.family("void mlx::core::cu::affine_dequantize<__nv_bfloat16, 64, 4>(") == "dequantize"
    rows = kernel_profile.summarise(spans, steps=2)
    assert [r["family"] for r in rows] == ["matmul", "elementwise", "attention", "norm / softmax / reduction", "other"]
    assert rows[0]["calls"] == 2 and rows[0]["ms"] == 4.0
    assert kernel_profile.families(rows) == {"matmul": 4.0, "elementwise": 2.0, "attention": 1.0,
                                             "norm / softmax / reduction": 0.5, "other": 0.25}
    table = kernel_profile.markdown("ours", rows, step_s=0.01)
    assert "GPU busy 7.8 ms of a 10.0 ms step (78%)" in table and "| matmul | 4.00 | 51.6% |" in table
    # where no CUDA build of PyTorch is (this CPU), one line before any work
    with pytest.raises(SystemExit, match="--profile needs an NVIDIA GPU|--profile reads CUPTI"):
        step_breakdown.main(["--shape", "tiny", "--variants", "ours", "--profile", "2", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_saved_activations_counts_mlx_and_pytorch(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmarks.saved_activations", "--scale", "16", "--length", "256",
                        "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    per_layer = json.loads((tmp_path / "saved_activations.json").read_text())["bytes_per_layer"]
    assert list(per_layer) == ["MLX: ours", "MLX: no dropout", "MLX: bf16 adapters", "MLX: swiglu recompute",
                               "MLX: lora in base dtype", "MLX: swiglu recompute + lora in base dtype", "MLX: fused lora",
                               "MLX: fused lora in base dtype", "MLX: swiglu recompute + fused lora", "PyTorch + PEFT"]
    assert all(v > 0 for v in per_layer.values())
    # dropout keeps masks and copies; at 32x narrower and 64 tokens that was within the CPU peak's noise (CI saw
    # +28 bytes), at 16x and 256 tokens it is ~230 KB against ~1 KB of noise
    assert per_layer["MLX: no dropout"] < per_layer["MLX: ours"]
    # meta-train's --recompute-swiglu and --lora-dtype base each keep less, together less than either
    both = per_layer["MLX: swiglu recompute + lora in base dtype"]
    assert both < per_layer["MLX: swiglu recompute"] < per_layer["MLX: ours"]
    assert both < per_layer["MLX: lora in base dtype"] < per_layer["MLX: ours"]
    # --fused-lora keeps neither the masks nor the dropped input: less than either choice above
    assert per_layer["MLX: fused lora"] < per_layer["MLX: lora in base dtype"]
    assert per_layer["MLX: swiglu recompute + fused lora"] < both


def test_distributed_benchmark_on_a_random_weights_geometry(tmp_path):
    """What scripts/device/distributed_gpu.sh runs on several GPUs, on this CPU: a runner geometry
    written as a random-weights model folder that the real CLI loads, 1 process and 2 under
    mlx.launch, and the 2-process adapters checked against the 1-process ones."""
    r = subprocess.run([sys.executable, "-m", "benchmarks.distributed", "--shape", "tiny", "--episodes", "2",
                        "--learners", "fomaml", "--support", "2", "--query", "2", "--inner-steps", "2",
                        "--max-length", "128", "--work", str(tmp_path / "work"), "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "distributed.json").read_text())["rows"]
    assert [(row["learner"], row["processes"]) for row in rows] == [("fomaml", 1), ("fomaml", 2)]
    # one task a rank: the same sums (tests/test_distributed.py checks Reptile through the CLI)
    assert rows[1]["adapters"] == {"identical": True, "relative_diff": 0.0}
    assert json.loads((tmp_path / "work" / "model-tiny" / "config.json").read_text())["vocab_size"] == 49152
    assert "| fomaml | 2 | default |" in (tmp_path / "distributed.md").read_text()

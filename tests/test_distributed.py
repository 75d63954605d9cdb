"""Meta-training under MLX's own launcher: 2 processes on this CPU with the ring backend end with the
very adapters of 1 process, a rank killed with SIGKILL stops the other with a clear error (no hang),
and --resume then completes."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx

from mlx_reptilora.model import adapters
from tests.conftest import run_cli

LAUNCH = str(Path(sys.executable).parent / "mlx.launch")


def args(tiny_dir, out, learner="reptile", episodes=3, meta_batch=2):
    return ["meta-train", "--model", str(tiny_dir), "--learner", learner, "--tasks", "aclsum-title,pydoc",
            "--episodes", str(episodes), "--meta-batch", str(meta_batch), "--support", "2", "--query", "2",
            "--inner-steps", "2", "--rank", "4", "--max-length", "128", "--checkpoint-every", "1",
            "--eval-every", "1", "--out", str(out)]


def launch(cli_args, **popen):
    """`mlx.launch -n 2 --backend ring` on this machine, each rank running the CLI; a fresh port
    range per call, so a run right after another never meets its sockets."""
    cmd = [LAUNCH, "-n", "2", "--backend", "ring", "--starting-port", str(random.randint(20000, 60000)), "--",
           sys.executable, "-m", "mlx_reptilora", *cli_args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def same(a, b) -> bool:
    wa, wb = adapters.read_weights(a), adapters.read_weights(b)
    return set(wa) == set(wb) and all(mx.array_equal(wa[k], wb[k]) for k in wa)


def test_two_processes_end_with_the_adapters_of_one(tiny_dir, tmp_path, learner="reptile"):
    """Bit-identical, not within a tolerance: with one task per rank each rank's mean is that task's
    contribution, the ring's all-sum adds the two in float32 as the single process does, and every
    task draws its dropout masks from its own seed. (FOMAML's twin run is the distributed benchmark's
    test, tests/test_benchmarks.py.)"""
    one = run_cli(*args(tiny_dir, tmp_path / "one", learner), "-q")  # one process: this one
    assert one.returncode == 0, one.stderr
    p = launch(args(tiny_dir, tmp_path / "two", learner))
    out, err = p.communicate(timeout=300)
    assert "2 processes, 1 of the 2 tasks of each episode on each" in err, err
    assert same(tmp_path / "one", tmp_path / "two")
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in rows] == [0, 1, 2] and all(len(r["inner_losses"]) == 2 for r in rows)
    assert json.loads((tmp_path / "two" / "meta.json").read_text())["processes"] == 2


def rank_pid(rank: int, out: Path) -> int | None:
    """The process of `rank` running into `out` (mlx.launch gives each its MLX_RANK)."""
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if str(out).encode() in cmd and f"MLX_RANK={rank}".encode() in env and b"mlx_reptilora" in cmd:
            return int(proc.name)
    return None


def test_a_killed_rank_stops_every_rank_then_resume_completes(tiny_dir, tmp_path):
    episodes = 8  # the kill lands after episode 2: six more (~1 s each) keep the run from ending first
    out = tmp_path / "run"
    p = launch(args(tiny_dir, out, episodes=episodes))
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "metrics.jsonl").exists()
                                          and (out / "metrics.jsonl").read_text().count("\n") >= 2):
        time.sleep(0.05)
    victim = rank_pid(1, out)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    _, err = p.communicate(timeout=120)  # every rank ended: no hang
    assert rank_pid(0, out) is None and rank_pid(1, out) is None
    assert "Node with rank 1 exited with code -9" in err
    # rank 0 either saw the lost peer first, or mlx.launch stopped it with SIGTERM: a clear line both ways
    assert ("lost contact with the other ranks" in err or "stopped by SIGTERM (under mlx.launch: another rank "
            "failed" in err), err
    assert "Traceback" not in err
    assert not (out / "adapters.safetensors").exists()

    p = launch(args(tiny_dir, out, episodes=episodes) + ["--resume"])
    _, err = p.communicate(timeout=600)
    assert "resuming" in err and (out / "adapters.safetensors").exists(), err
    rows = [json.loads(line)["episode"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(episodes))
    # and it ends where an uninterrupted run ends (one process: the same, as the test above shows)
    straight = run_cli(*args(tiny_dir, tmp_path / "straight", episodes=episodes), "-q")
    assert straight.returncode == 0 and same(out, tmp_path / "straight")


def test_a_meta_batch_that_does_not_divide_is_one_line_on_every_rank(tiny_dir, tmp_path):
    p = launch(args(tiny_dir, tmp_path / "odd", meta_batch=3))
    _, err = p.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 2 and all("--meta-batch 3 does not divide by the 2 processes" in line for line in lines), err
    assert not (tmp_path / "odd").exists()

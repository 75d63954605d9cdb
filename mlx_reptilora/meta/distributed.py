"""Meta-training across processes with mx.distributed, as `mlx.launch` starts them (ring, MPI, JACCL
or NCCL): the tasks of a meta-batch are adapted independently from the same θ, so each rank takes
an equal share, and only their mean crosses processes.

Every rank draws the same meta-batch from the same sampler state; each learner's per-task results
(φ for Reptile, meta-gradients for FOMAML and MAML) are averaged with `average_gradients`, so θ, the
outer optimizer and the sampler stay identical everywhere. Rank 0 alone reads and writes the run
folder; what it reads on --resume reaches the others by broadcast, so ranks on other machines need
no copy of it.
"""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
from mlx.nn.utils import average_gradients

from ..errors import UserError
from . import trees


class World:
    """The processes of one run; a single process is a world of one (no communication at all)."""

    def __init__(self, group=None):
        self.group = group
        self.rank = group.rank() if group is not None else 0
        self.size = group.size() if group is not None else 1

    @classmethod
    def init(cls) -> World:
        group = mx.distributed.init()
        return cls(group if group.size() > 1 else None)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, items: list) -> list:
        """This rank's contiguous share: rank r of w takes items [r n/w, (r+1) n/w)."""
        n = len(items) // self.size
        return items[self.rank * n:(self.rank + 1) * n]

    def _call(self, fn):
        try:
            out = fn()
            mx.eval(out)
            return out
        except RuntimeError as e:  # a peer died: the ring backend says "connection to a peer was lost"
            raise RankLost(f"rank {self.rank} of {self.size}: lost contact with the other ranks "
                           f"({str(e).strip()}); did another rank die? Its log says why. The last "
                           f"checkpoint is in the run's folder: continue with --resume") from None

    def mean(self, tree: dict) -> dict:
        """The mean over ranks of a nested tree of arrays (adapter names may hold dots)."""
        if self.size == 1:
            return tree
        flat = trees.flatten(tree)
        averaged = self._call(lambda: average_gradients(list(flat.values()), self.group))
        return trees.unflatten(dict(zip(flat, averaged)))

    def any(self, flag: bool) -> bool:
        if self.size == 1:
            return flag
        total = self._call(lambda: mx.distributed.all_sum(mx.array([float(flag)]), group=self.group))
        return total.item() > 0

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Every rank's rows (float32), stacked in rank order."""
        if self.size == 1:
            return rows
        return np.array(self._call(lambda: mx.distributed.all_gather(mx.array(rows, dtype=mx.float32),
                                                                     group=self.group)))

    def broadcast(self, tree: dict) -> dict:
        """Rank 0's flat {name: array} dict on every rank; the others pass arrays of the same shapes."""
        if self.size == 1:
            return tree
        # float32 carries θ and Adam's moments exactly, and step counters up to 2^24
        flat = mx.concatenate([(v if self.main else mx.zeros_like(v)).reshape(-1).astype(mx.float32)
                               for v in tree.values()])
        summed = self._call(lambda: mx.distributed.all_sum(flat, group=self.group))
        out, i = {}, 0
        for k, v in tree.items():
            out[k] = summed[i:i + v.size].reshape(v.shape).astype(v.dtype)
            i += v.size
        return out

    def broadcast_json(self, obj=None):
        """Rank 0's JSON-able object on every rank (sent as bytes: a length, then the text)."""
        if self.size == 1:
            return obj
        data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if self.main else np.zeros(0, np.uint8)
        n = int(self._call(lambda: mx.distributed.all_sum(mx.array([data.size], mx.int32), group=self.group)).item())
        buf = np.zeros(n, np.int32)
        if self.main:
            buf[:] = data
        text = np.array(self._call(lambda: mx.distributed.all_sum(mx.array(buf), group=self.group)))
        return json.loads(text.astype(np.uint8).tobytes().decode())

    def check_divides(self, meta_batch: int) -> None:
        if meta_batch % self.size:
            raise UserError(f"--meta-batch {meta_batch} does not divide by the {self.size} processes: each rank "
                            f"adapts an equal share of the tasks (use a multiple of {self.size})")


class RankLost(UserError):
    """Another rank stopped answering (it died, or its machine did)."""


def agree(world: World, check):
    """`check()`'s answer from rank 0, on every rank; its UserError is raised on every rank too."""
    answer = {"value": None, "error": None}
    if world.main:
        try:
            answer["value"] = check()
        except UserError as e:
            answer["error"] = str(e)
    answer = world.broadcast_json(answer)
    if answer["error"]:
        raise UserError(answer["error"] if world.main else f"rank 0 stopped the run: {answer['error']}")
    return answer["value"]


def gather_metrics(metrics: dict[str, list], world: World) -> dict[str, list]:
    """Per-task metrics of every rank's tasks, in meta-batch order (float32 across processes)."""
    if world.size == 1:
        return metrics
    keys = sorted(metrics)
    widths = [len(v[0]) if isinstance(v[0], list) else 0 for v in (metrics[k] for k in keys)]
    rows = np.array([[x for k, w in zip(keys, widths) for x in (metrics[k][j] if w else [metrics[k][j]])]
                     for j in range(len(metrics[keys[0]]))], np.float32)
    out, col = {k: [] for k in keys}, 0
    every = world.gather(rows)
    for k, w in zip(keys, widths):
        out[k] = [row[col:col + w].tolist() if w else float(row[col]) for row in every]
        col += max(w, 1)
    return out

"""Meta-parameters and optimizer state are nested dicts of arrays whose innermost keys are adapter
names, which hold dots ("model.layers.3.self_attn.q_proj.lora_a"). mlx.utils' flattening joins
with dots, so it cannot come back; these join with "/", which no adapter name holds."""

from __future__ import annotations

SEP = "/"


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"theta": {"a.b": x}} -> {"theta/a.b": x}."""
    out = {}
    for k, v in tree.items():
        if SEP in str(k):
            raise ValueError(f"key {k!r} holds {SEP!r}")
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, path + SEP))
        else:
            out[path] = v
    return out


def unflatten(flat: dict) -> dict:
    out: dict = {}
    for path, v in flat.items():
        *parents, leaf = path.split(SEP)
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out

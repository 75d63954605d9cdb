"""ACLSum (Takeshita et al., 2024; the `aclsum` package, MIT): 100 / 50 / 100 ACL papers, each with
human summaries of its challenge, approach and outcome, and its title."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from ...errors import UserError
from ..examples import Example

ACLSUM_ASPECTS = ("challenge", "approach", "outcome")
ACLSUM_SPLITS = {"train": "train", "valid": "val", "test": "test"}


def _aclsum_dir() -> Path:
    # find_spec, not import: the package's __init__ pulls `sienna`, which reading JSONL needs not.
    spec = importlib.util.find_spec("aclsum")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the aclsum tasks need the aclsum package (Python >= 3.11): pip install aclsum")
    return Path(list(spec.submodule_search_locations)[0]) / "dataset"


def _detokenize(sentence: str) -> str:
    """ACLSum stores sentences tokenized ("answer extraction ( QA ) ."); rejoin the punctuation."""
    s = re.sub(r" ([.,;:!?%)\]}])", r"\1", sentence)
    s = re.sub(r"([(\[{]) ", r"\1", s)
    return re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", s)


def aclsum(aspect: str, sections: tuple[str, ...] = ("abstract", "introduction")) -> dict[str, list[Example]]:
    """aspect in challenge/approach/outcome (document = the sections, summary = that aspect's
    human summary) or "title" (document = the abstract, summary = the paper's title)."""
    root = _aclsum_dir()
    out = {}
    for split, fname in ACLSUM_SPLITS.items():
        examples = []
        with open(root / f"{fname}.jsonl", encoding="utf-8") as f:
            for line in f:
                paper = json.loads(line)
                secs = ("abstract",) if aspect == "title" else sections
                doc = " ".join(_detokenize(s) for sec in secs for s in paper["sentences"][sec])
                summary = paper["title"] if aspect == "title" else paper["summary"][aspect]
                examples.append(Example(doc, summary.strip(), paper["id"]))
        out[split] = examples
    return out

"""Real summarization data that works offline: ACLSum (the `aclsum` package) and the docstrings of
the running Python's standard library. Each source returns {"train"|"valid"|"test": [Example]}."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import re
import sys
import sysconfig
from pathlib import Path

from ..errors import UserError
from .examples import Example

ACLSUM_ASPECTS = ("challenge", "approach", "outcome")
ACLSUM_SPLITS = {"train": "train", "valid": "val", "test": "test"}
PYDOC_MIN_WORDS = 30


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


def _stdlib_files(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        # No test modules (test/, tests/, idle_test/, test_*.py) and no third-party packages.
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__")
                             and not d.startswith("test") and not d.endswith("_test") and d != "tests")
        for name in sorted(filenames):
            if name.endswith(".py") and not name.startswith("test_"):
                yield Path(dirpath) / name


def _docstring_pairs(path: Path, module: str):
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if not doc:
                continue
            head, _, body = doc.strip().partition("\n\n")
            # PEP 257: a one-line summary, a blank line, then the body.
            if body and "\n" not in head.strip() and len(body.split()) >= PYDOC_MIN_WORDS:
                name = module if isinstance(node, ast.Module) else f"{module}.{node.name}"
                yield Example(body.strip(), head.strip(), name)


def pydoc(cache: Path | None = None) -> dict[str, list[Example]]:
    """Standard-library docstrings: body -> first-line summary; split 80/10/10 by a hash of the
    qualified name, so membership never depends on what else is in the library."""
    root = Path(sysconfig.get_paths()["stdlib"])
    key = hashlib.sha256(f"{sys.version}:{root}".encode()).hexdigest()[:12]
    cached = cache / f"pydoc-{key}.json" if cache else None
    if cached and cached.exists():
        raw = json.loads(cached.read_text())
        return {s: [Example(*e) for e in v] for s, v in raw.items()}
    seen, splits = set(), {"train": [], "valid": [], "test": []}
    for path in _stdlib_files(root):
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        for ex in _docstring_pairs(path, module):
            if ex.document in seen:  # inherited/copied docstrings would leak across splits
                continue
            seen.add(ex.document)
            bucket = int(hashlib.sha256(ex.id.encode()).hexdigest(), 16) % 10
            splits["train" if bucket < 8 else "valid" if bucket == 8 else "test"].append(ex)
    if cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({s: [list(e) for e in v] for s, v in splits.items()}))
        os.replace(tmp, cached)
    return splits

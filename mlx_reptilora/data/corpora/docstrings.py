"""Docstrings as tasks: the body of a PEP 257 docstring (a summary line, a blank line, then at least
30 words) and its summary line, or the name of what it documents. Two independent corpora: the
running Python's standard library (PSF licence) and NumPy's own Python sources (BSD-3-Clause)."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import sys
import sysconfig
from pathlib import Path

from ...errors import UserError
from ..examples import Example
from . import common

PYDOC_MIN_WORDS = 30
NUMPY_SECTIONS = ("Parameters", "Returns", "Yields", "Raises", "See Also", "Notes", "Examples", "References",
                  "Attributes", "Methods", "Warnings", "Other Parameters")


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


def _numpy_body(doc: str) -> str:
    """numpydoc: the extended summary, the text before the first section heading (Parameters ...)."""
    lines = doc.strip().splitlines()
    for i in range(len(lines) - 1):
        if lines[i].strip() in NUMPY_SECTIONS and set(lines[i + 1].strip()) == {"-"}:
            return "\n".join(lines[:i]).strip()
    return doc.strip()


def numpy_docstrings() -> dict[str, list[dict]]:
    """NumPy's documented functions and classes: {split: [{id, name, summary, body}]}, from the .py
    files of the installed package (parsed once, cached)."""
    spec = importlib.util.find_spec("numpy")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the numpy tasks need numpy: pip install numpy")
    root = Path(list(spec.submodule_search_locations)[0])

    def build():
        out, seen = [], set()
        for path in _stdlib_files(root):
            module = "numpy." + ".".join(path.relative_to(root).with_suffix("").parts)
            for ex in _docstring_pairs(path, module):
                body = _numpy_body(ex.document)
                if common.words(body) >= PYDOC_MIN_WORDS and body not in seen:
                    seen.add(body)
                    out.append({"id": ex.id, "name": ex.id.rsplit(".", 1)[-1], "summary": ex.summary, "body": body})
        return out

    return common.split(common.cached("numpy-docstrings", [root / "version.py"], build))


def as_names(splits: dict[str, list[Example]]) -> dict[str, list[Example]]:
    """A docstring body (its object's name masked) -> that name."""
    return {s: [Example(common.mask(e.document, [e.id.rsplit(".", 1)[-1]]), e.id.rsplit(".", 1)[-1], e.id)
                for e in v] for s, v in splits.items()}

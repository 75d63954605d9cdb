"""Docstrings as tasks: the body of a PEP 257 docstring (a summary line, a blank line, then at least
30 words) and its summary line, or the name of what it documents. Independent corpora: the running
Python's standard library (PSF licence) and the Python sources of three installed numpydoc-style
packages: NumPy (BSD-3-Clause), pandas (PyPI `pandas`, BSD-3-Clause; it comes with `datasets`) and
Matplotlib (PyPI `matplotlib`, the PSF-based Matplotlib licence; a dependency of this project)."""

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

from ...errors import UserError
from ..examples import Example
from ..spec import Offline
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
            if ex.input in seen:  # inherited/copied docstrings would leak across splits
                continue
            seen.add(ex.input)
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
    return package_docstrings("numpy")


# pandas and Matplotlib build parts of their docstrings at import time (%(klass)s, {klass}, %s):
# the raw text of those is a template, not documentation.
TEMPLATE = re.compile(r"%\([^)]*\)[sdr]|%s|\{[A-Za-z_]\w*\}")


def _public_pairs(path: Path, module: str):
    """Like _docstring_pairs, with qualified ids (module.Class.method: unique within a package) and
    no private names (a leading underscore anywhere in the qualified name)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{prefix}.{child.name}", child
                if isinstance(child, ast.ClassDef):
                    yield from walk(child, f"{prefix}.{child.name}")

    for name, node in [(module, tree), *walk(tree, module)]:
        doc = ast.get_docstring(node)
        if not doc or any(part.startswith("_") for part in name.split(".")):
            continue
        head, _, body = doc.strip().partition("\n\n")
        if body and "\n" not in head.strip() and not TEMPLATE.search(doc):
            yield Example(body.strip(), head.strip(), name)


def package_docstrings(package: str, version_file: str = "version.py", public: bool = False,
                       min_words: int = PYDOC_MIN_WORDS) -> dict[str, list[dict]]:
    """An installed package's documented functions, classes and modules: {split: [{id, name, summary,
    body}]}, body being the numpydoc extended summary, from its .py files (parsed once, cached under
    PACKAGE-docstrings, keyed by its version file). public=True: qualified ids, no private modules or
    names, no templated docstrings (NumPy's corpus predates it and keeps its ids)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the {package} tasks need {package}: pip install {package}")
    root = Path(list(spec.submodule_search_locations)[0])
    version = root / version_file if (root / version_file).exists() else root / "__init__.py"

    def build():
        out, seen = [], set()
        for path in _stdlib_files(root):
            parts = path.relative_to(root).with_suffix("").parts
            if public:
                parts = parts[:-1] if parts[-1] == "__init__" else parts
                if any(part.startswith("_") for part in parts):
                    continue  # private modules (pandas._libs, matplotlib._mathtext, ...)
            module = ".".join((package, *parts))
            for ex in (_public_pairs if public else _docstring_pairs)(path, module):
                body = _numpy_body(ex.input)
                if common.words(body) >= min_words and body not in seen:
                    seen.add(body)
                    out.append({"id": ex.id, "name": ex.id.rsplit(".", 1)[-1], "summary": ex.target, "body": body})
        return out

    return common.split(common.cached(f"{package}-docstrings", [version], build))


def as_names(splits: dict[str, list[Example]]) -> dict[str, list[Example]]:
    """A docstring body (its object's name masked) -> that name."""
    return {s: [Example(common.mask(e.input, [e.id.rsplit(".", 1)[-1]]), e.id.rsplit(".", 1)[-1], e.id)
                for e in v] for s, v in splits.items()}


# pandas and Matplotlib: extended summaries of at least 20 words (30 leaves Matplotlib too few).
PACKAGES = {"pandas": ("_version_meson.py", "BSD-3-Clause", "pandas"),
            "matplotlib": ("_version.py", "Matplotlib licence (PSF-based)", "Matplotlib")}


def _package(package: str) -> dict[str, list[dict]]:
    return package_docstrings(package, PACKAGES[package][0], public=True, min_words=20)


def package_summaries(package: str) -> dict[str, list[Example]]:
    """Extended summary -> the summary line."""
    return {s: [Example(r["body"], r["summary"], r["id"]) for r in v] for s, v in _package(package).items()}


def package_names(package: str) -> dict[str, list[Example]]:
    """Extended summary (the name masked) -> the name. Two bodies alike but for their names would be
    one question with two answers (maybe in two splits): the first id keeps it."""
    splits = {s: [Example(common.mask(r["body"], [r["name"]]), r["name"], r["id"]) for r in v]
              for s, v in _package(package).items()}
    first = {}
    for ex in sorted((e for v in splits.values() for e in v), key=lambda e: e.id):
        first.setdefault(ex.input, ex.id)
    return {s: [e for e in v if first[e.input] == e.id] for s, v in splits.items()}


def tasks() -> list[Offline]:
    """pandas-doc, pandas-name, matplotlib-doc, matplotlib-name (pydoc and numpy are declared in tasks.py)."""
    out = []
    for package, (_, licence, title) in PACKAGES.items():
        source = f"{title}'s docstrings (PyPI: {package})"
        out += [
            Offline(f"{package}-doc", package, f"Write the one-line summary of this {title} documentation.",
                    f"{source}: extended summary -> summary line", licence,
                    lambda cfg, p=package: package_summaries(p)),
            Offline(f"{package}-name", package,
                    f"Name the {title} function, method, class or module this documentation describes.",
                    f"{source}: extended summary (name hidden) -> name", licence,
                    lambda cfg, p=package: package_names(p), metric="exact"),
        ]
    return out

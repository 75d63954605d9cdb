"""Real text that works offline, each corpus installed from PyPI or Debian's packages and parsed once
(cached): ACLSum, Python's and NumPy's docstrings, WordNet, FOLDOC and the Jargon File, and the Linux
man-pages. Debian's package descriptions are deliberately not among them: they are kept for
evaluation."""

from .aclsum import ACLSUM_ASPECTS, aclsum
from .docstrings import PYDOC_MIN_WORDS, pydoc

__all__ = ["ACLSUM_ASPECTS", "PYDOC_MIN_WORDS", "aclsum", "pydoc"]

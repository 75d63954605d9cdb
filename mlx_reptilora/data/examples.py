"""The unit of data: one input and the target the model should produce for it.

`input` is what the user turn holds (a document, a prompt, a question); `target` is the answer the
loss covers (a summary, a completion, the right option). A chat row keeps its whole conversation in
`messages` (the target is its last assistant turn); a choice row lists its options in `choices`
(the target is one of them); a text row has no input and is all target.
"""

from __future__ import annotations

from typing import NamedTuple


class Example(NamedTuple):
    input: str
    target: str
    id: str = ""
    choices: tuple[str, ...] | None = None
    messages: tuple[dict, ...] | None = None

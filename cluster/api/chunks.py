"""Streamed chunks without a pydantic object per token.

A stream's token chunks differ only in their text, so each kind of chunk is serialised once, from
the SDK's own type with a marker where the text goes, and split around the marker. A token then
costs one JSON string encoding and a join: the bytes are the SDK's own serialisation with the
text swapped in (the tests parse every chunk back with the SDK's types).
"""

from __future__ import annotations

import json

from pydantic import BaseModel

MARKER = "\u0001text\u0001"  # a string no id, model name or role carries
_ENCODED = json.dumps(MARKER)


class ChunkTemplate:
    """One kind of chunk, with the text left open."""

    __slots__ = ("_prefix", "_suffix")

    def __init__(self, prototype: BaseModel, exclude_none: bool = True) -> None:
        """`prototype` holds `MARKER` (once) where each chunk's text goes."""
        serialised = prototype.model_dump_json(exclude_none=exclude_none)
        prefix, found, suffix = serialised.partition(_ENCODED)
        if not found or _ENCODED in suffix:
            raise ValueError("the prototype must hold the marker exactly once")
        self._prefix, self._suffix = prefix, suffix

    def __call__(self, text: str) -> str:
        return self._prefix + json.dumps(text, ensure_ascii=False) + self._suffix

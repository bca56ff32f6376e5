"""Token log-probabilities in OpenAI's two shapes (chat's per-token objects, completions' legacy
lists); each token's text and bytes decoded through harmony."""

from __future__ import annotations

from collections.abc import Sequence

from openai.types.chat import ChatCompletionTokenLogprob
from openai.types.chat.chat_completion_token_logprob import TopLogprob
from openai.types.completion_choice import Logprobs

from cluster.contracts import TokenLogprob
from cluster.harmony import Harmony


def _text(harmony: Harmony, token: int) -> tuple[str, list[int]]:
    """A token's text and bytes (a character may span tokens: its part shows as U+FFFD)."""
    raw = harmony.token_bytes(token)
    return raw.decode("utf-8", errors="replace"), list(raw)


def token_logprobs(
    harmony: Harmony, entries: Sequence[tuple[int, TokenLogprob]]
) -> list[ChatCompletionTokenLogprob]:
    """Chat's shape: each token's text, bytes and logprob, with the top alternatives'."""
    out = []
    for token, (logprob, top) in entries:
        text, raw = _text(harmony, token)
        alternatives = []
        for alternative, alternative_logprob in top:
            alt_text, alt_raw = _text(harmony, alternative)
            alternatives.append(
                TopLogprob(token=alt_text, bytes=alt_raw, logprob=alternative_logprob)
            )
        out.append(
            ChatCompletionTokenLogprob(
                token=text, bytes=raw, logprob=logprob, top_logprobs=alternatives
            )
        )
    return out


def legacy_logprobs(
    harmony: Harmony, entries: Sequence[tuple[int, TokenLogprob]], offset: int
) -> Logprobs:
    """The legacy completions shape: tokens, their logprobs, the top alternatives as
    {token: logprob}, and where each token starts in the completion's text."""
    tokens, offsets = [], []
    for token, _ in entries:
        text = _text(harmony, token)[0]
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
    top = [{_text(harmony, t)[0]: lp for t, lp in alts} for _, (_, alts) in entries]
    return Logprobs(
        tokens=tokens,
        token_logprobs=[lp for _, (lp, _) in entries],
        top_logprobs=top,
        text_offset=offsets,
    )

"""Templated chunks are the SDK's own serialisation with the text swapped in."""

import json

import pytest
from openai.types import Completion, CompletionChoice
from openai.types.chat import ChatCompletionChunk
from openai.types.chat import chat_completion_chunk as ck

from cluster.api.chunks import MARKER, ChunkTemplate

TEXTS = [
    "plain",
    'quote " and \\ backslash',
    "line\nbreak\ttab",
    "naïve — 日本語 🚀",
    "\x00\x1f",
    "",
]


def _chat(delta: ck.ChoiceDelta) -> ChatCompletionChunk:
    return ChatCompletionChunk(id="chatcmpl-1", object="chat.completion.chunk", created=1,
                               model="m", choices=[ck.Choice(index=0, delta=delta)])  # fmt: skip


@pytest.mark.parametrize("text", TEXTS)
def test_chat_chunk_matches_the_sdk(text):
    for field in ("content", "reasoning"):
        template = ChunkTemplate(_chat(ck.ChoiceDelta(**{field: MARKER})))
        sdk = _chat(ck.ChoiceDelta(**{field: text}))
        assert json.loads(template(text)) == json.loads(sdk.model_dump_json(exclude_none=True))
        parsed = ChatCompletionChunk.model_validate_json(template(text))
        assert getattr(parsed.choices[0].delta, field) == text


@pytest.mark.parametrize("text", TEXTS)
def test_completion_chunk_matches_the_sdk(text):
    def completion(t: str) -> Completion:
        return Completion(id="cmpl-1", object="text_completion", created=1, model="m",
                          choices=[CompletionChoice.model_construct(index=0, text=t,
                                                                    finish_reason=None)])  # fmt: skip

    template = ChunkTemplate(completion(MARKER), exclude_none=False)
    # Mid-stream chunks carry `finish_reason: null`, which the SDK's type only takes unvalidated
    # (as its stream reader does): the bytes are compared instead.
    assert json.loads(template(text)) == json.loads(completion(text).model_dump_json())
    assert json.loads(template(text))["choices"][0]["text"] == text


def test_a_prototype_needs_the_marker_once():
    with pytest.raises(ValueError):
        ChunkTemplate(_chat(ck.ChoiceDelta(content="no marker")))

"""An `OutputConstraint` as an xgrammar structural tag: the grammar binds harmony's structure, not
the first token, so the model still reasons before it answers.

The tag is a sequence: an analysis message (any text, at most the reasoning budget's tokens: at
the budget the grammar allows only `<|end|>`; optional at low effort, required above it), then
one of the endings the constraint allows: the final message (free text, or JSON under the
schema) or a commentary message addressed to `functions.<name>` whose body is JSON valid against
that function's parameters. vLLM 0.32's own
server builds the same shape (`vllm/parser/harmony.py`); plain dicts here, in xgrammar's JSON
format, keep this module free of xgrammar (the mock-only install lacks it).

Markers are special tokens, matched as tokens. An ending has no end of its own: harmony's stop
tokens (`<|return|>`, `<|call|>`) end a reply, and xgrammar allows a stop token only once the
grammar is complete, never inside it.
"""

from __future__ import annotations

import json
from typing import Any

from cluster.contracts import OutputConstraint
from cluster.harmony import SPECIAL_TOKENS, TOOL_NAMESPACE

# Runs of whitespace inside JSON: one at most. Unbounded, a grammar lets a model (a random one
# at once, a trained one now and then) pad an answer with whitespace until max_tokens.
MAX_WHITESPACE = 1


def _token(text: str) -> dict[str, Any]:
    """One special token, by id. As a plain string, a marker such as `<|message|>` would also
    match its characters spelled with ordinary tokens, which harmony does not read as a marker
    (and xgrammar resolves a token's name only with the tokenizer at hand, not when vLLM
    validates a request)."""
    return {"type": "token", "token": SPECIAL_TOKENS[text]}


def _const(text: str) -> dict[str, Any]:
    return {"type": "const_string", "value": text}


def _any_text(max_tokens: int | None = None) -> dict[str, Any]:
    text: dict[str, Any] = {"type": "any_text"}
    if max_tokens is not None:
        text["max_tokens"] = max_tokens
    return text


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": schema, "max_whitespace_cnt": MAX_WHITESPACE}


def _message(header: list[dict[str, Any]], content: dict[str, Any], end: Any) -> dict[str, Any]:
    """`<|channel|>` header `<|message|>` content end: one harmony message."""
    body = {"type": "tag", "begin": _token("<|message|>"), "content": content, "end": end}
    return {"type": "sequence", "elements": [_token("<|channel|>"), *header, body]}


def _json_marker() -> dict[str, Any]:
    """` <|constrain|>json`, as gpt-oss marks a JSON body."""
    return {"type": "sequence", "elements": [_const(" "), _token("<|constrain|>"), _const("json")]}


def structural_tag(constraint: OutputConstraint) -> dict[str, Any]:
    """The xgrammar `StructuralTag` (as JSON-ready dicts) enforcing `constraint`."""
    analysis: dict[str, Any] = {
        "type": "sequence",
        "elements": [
            _message(
                [_const("analysis")], _any_text(constraint.reasoning_budget), _token("<|end|>")
            ),
            _token("<|start|>"),
            _const("assistant"),
        ],
    }
    if not constraint.reasoning_required:
        analysis = {"type": "optional", "content": analysis}
    endings: list[dict[str, Any]] = []
    if constraint.final:
        if constraint.final_schema is None:
            endings.append(_message([_const("final")], _any_text(), ""))
        else:
            marker = {"type": "optional", "content": _json_marker()}
            endings.append(_message([_const("final"), marker], _json(constraint.final_schema), ""))
    for tool in constraint.tools:
        header = [_const(f"commentary to={TOOL_NAMESPACE}.{tool.name}"), _json_marker()]
        endings.append(_message(header, _json(tool.parameters), ""))
    ending = endings[0] if len(endings) == 1 else {"type": "or", "elements": endings}
    return {
        "type": "structural_tag",
        "format": {"type": "sequence", "elements": [analysis, ending]},
    }


def structural_tag_json(constraint: OutputConstraint) -> str:
    return json.dumps(structural_tag(constraint))

"""What a request asks of its reply's shape: a JSON Schema or JSON object for the answer, a forced
tool call, a reasoning budget; checked here (a 400 naming the parameter), enforced by the engine.

gpt-oss answers on the final channel after reasoning on the analysis channel, so the constraint
binds the final message (or the forced call's arguments) and leaves the reasoning free within its
budget (`OutputConstraint`, which engines enforce). The schema also reaches the model the way it
was trained to see one: a `# Response Formats` section of the developer message.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator, SchemaError

from cluster.api.errors import OpenAIError
from cluster.api.protocol import NamedFunctionChoice, NamedToolChoice, ResponseFormat, TextFormat
from cluster.config import EffortProfile
from cluster.contracts import Effort, OutputConstraint, ToolFormat
from cluster.harmony import ToolSpec

# Keywords that the engine's grammar (xgrammar) enforces and the mock's instance generator honours.
_ENFORCED = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "$ref",
    "$defs",
    "definitions",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
}
_ANNOTATIONS = {
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
}
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")
# With a format to meet, reasoning gets at most this share of the output budget unless a budget
# says otherwise: the answer always keeps room.
FORMAT_REASONING_SHARE = 0.5
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def _unsupported(schema: Any, path: str) -> Iterator[tuple[str, str]]:
    """(keyword, JSON pointer) of every keyword the engine could not enforce."""
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        if key not in _ENFORCED and key not in _ANNOTATIONS:
            yield key, path or "/"
        elif key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                yield from _unsupported(sub, f"{path}/{key}/{name}")
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                yield from _unsupported(sub, f"{path}/{key}/{i}")
        elif key in ("items", "additionalProperties"):
            yield from _unsupported(value, f"{path}/{key}")


def check_schema(schema: dict[str, Any], param: str) -> dict[str, Any]:
    """A valid JSON Schema whose every keyword the engine enforces, or a 400 saying which not."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "/"
        message = f"{param} is not a valid JSON Schema at {where}: {err.message}"
        raise OpenAIError(400, message, param=param) from None
    for keyword, where in _unsupported(schema, ""):
        raise OpenAIError(
            400,
            f"{param}: the JSON Schema keyword `{keyword}` (at {where}) is not supported; "
            f"supported: {', '.join(sorted(_ENFORCED))}",
            param=param,
        )
    return schema


@dataclass(frozen=True)
class ReplyFormat:
    """A request's asks on its reply, before the output budget is known."""

    schema: dict[str, Any] | None = None  # the answer's JSON Schema (json_object: any object)
    schema_name: str | None = None
    schema_description: str | None = None
    tool_choice: str = "auto"  # auto, required, or a function's name
    tools: Sequence[ToolSpec] = ()
    reasoning_budget: int | None = None  # the request's own cap on analysis tokens

    @classmethod
    def of(
        cls,
        fmt: ResponseFormat | TextFormat | None = None,
        schema_param: str = "response_format",
        tool_choice: str | NamedToolChoice | NamedFunctionChoice | None = None,
        tools: Sequence[ToolSpec] = (),
        reasoning_budget: int | None = None,
    ) -> ReplyFormat:
        """Checked: a valid, enforceable schema; a tool choice naming an offered function."""
        choice = (
            tool_choice.name
            if isinstance(tool_choice, NamedToolChoice | NamedFunctionChoice)
            else tool_choice or "auto"
        )
        names = [t.name for t in tools]
        if choice == "required" and not tools:
            raise OpenAIError(400, "tool_choice `required` needs tools", param="tool_choice")
        if choice not in ("auto", "none", "required") and choice not in names:
            raise OpenAIError(
                400,
                f"tool_choice names the function `{choice}`, which is not among the tools "
                f"offered ({', '.join(names) or 'none'})",
                param="tool_choice",
            )
        kind = fmt.type if fmt is not None else None
        if kind == "json_schema":
            schema = check_schema(fmt.schema_ or {}, schema_param)
        elif kind == "json_object":
            schema = ANY_OBJECT
        else:
            schema = None
        name, description = (fmt.name, fmt.description) if fmt is not None else (None, None)
        return cls(schema, name, description, choice, tools, reasoning_budget)

    def instructions(self, instructions: str | None) -> str | None:
        """Developer instructions with the answer's schema as a `# Response Formats` section
        (openai-harmony renders none itself)."""
        if self.schema is None or self.schema is ANY_OBJECT:
            return instructions
        section = f"# Response Formats\n\n## {self.schema_name or 'response'}\n\n"
        if self.schema_description:
            section += f"// {self.schema_description}\n"
        section += json.dumps(self.schema, separators=(",", ":"))
        return f"{instructions}\n\n{section}" if instructions else section

    def constraint(
        self, effort: Effort, profile: EffortProfile, max_tokens: int
    ) -> OutputConstraint | None:
        """What the engine must enforce for this request at one effort; None: nothing (no
        grammar, no cost). Above low effort the reply must reason first."""
        budgets = [b for b in (self.reasoning_budget, profile.max_reasoning_tokens) if b]
        forced = self.tool_choice not in ("auto", "none")
        if self.schema is not None or forced:
            budgets.append(max(1, math.floor(max_tokens * FORMAT_REASONING_SHARE)))
        elif not budgets:
            return None
        offered = [t for t in self.tools if self.tool_choice in ("auto", "required", t.name)]
        return OutputConstraint(
            reasoning_budget=min(budgets),
            reasoning_required=effort is not Effort.LOW,
            final=not forced,
            final_schema=self.schema,
            tools=tuple(ToolFormat(t.name, t.parameters or ANY_OBJECT) for t in offered),
        )

"""What the mock model says: real harmony tokens, with lengths drawn per reasoning effort.

The mock reads its prompt the way the model does (the effort from the system message, function
tools from the developer message, the last user message) and writes an analysis message then a
final answer, or a tool call on the commentary channel when tools are offered and the user names
one. Lengths follow the configured lognormal per effort, seeded per request for reproducibility.

A request's `OutputConstraint` is the mock's grammar: the analysis stays within its budget, a
schema'd answer is a JSON instance of the schema (jsf, a JSON Schema faker), and a forced call
names an allowed function with arguments valid against its parameters.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema
from faker import Faker
from jsf import JSF

from cluster.config import EffortProfile
from cluster.contracts import Effort, OutputConstraint, ToolFormat
from cluster.harmony import FIRST_SPECIAL_TOKEN, TOOL_NAMESPACE, Harmony

_VOCABULARY = (
    "the user asks about this so we should consider what matters most here and check each "
    "assumption carefully before answering then compare options weigh the evidence note the "
    "constraints derive a result verify it against the question and keep the reply clear "
    "concise correct helpful grounded in facts while avoiding speculation"
)
_WORDS = _VOCABULARY.split()

_EFFORT_RE = re.compile(r"Reasoning: (low|medium|high)")
_TOOL_RE = re.compile(
    r"^type (\w+) = \(_: \{(.*?)^\}\) => any;|^type (\w+) = \(\) => any;", re.MULTILINE | re.DOTALL
)
_FIELD_RE = re.compile(r"^(\w+)(\??): (\w+)", re.MULTILINE)
_DUMMY = {"number": 1, "boolean": True}
_USER_RE = re.compile(r"<\|start\|>user<\|message\|>(.*?)<\|end\|>", re.DOTALL)


INSTANCE_ATTEMPTS = 20


def schema_instance(schema: dict[str, Any], rng: random.Random) -> Any:
    """A JSON value valid against `schema`, reproducible from `rng`. jsf draws from the global
    `random` and Faker's shared generator: both are seeded here and the global state restored."""
    faker, validator = JSF(schema), jsonschema.Draft202012Validator(schema)
    state = random.getstate()
    try:
        for _ in range(INSTANCE_ATTEMPTS):
            seed = rng.getrandbits(32)
            random.seed(seed)
            Faker.seed(seed)
            value = faker.generate()
            if validator.is_valid(value):
                return value
    finally:
        random.setstate(state)
    raise ValueError(f"no instance of the schema found in {INSTANCE_ATTEMPTS} attempts")


@dataclass(frozen=True)
class PromptView:
    """What the mock understood from a rendered prompt."""

    effort: Effort
    tools: dict[str, dict[str, str]]  # function name -> required field -> TypeScript type
    user_text: str
    chat: bool  # ends with `<|start|>assistant`: reply in harmony channels, else continue text


def read_prompt(harmony: Harmony, prompt_token_ids: Sequence[int]) -> PromptView:
    text = harmony.decode(prompt_token_ids)
    effort = _EFFORT_RE.search(text)
    namespace = text.split(f"namespace {TOOL_NAMESPACE} {{", 1)
    tools: dict[str, dict[str, str]] = {}
    if len(namespace) > 1:
        for name, fields, bare_name in _TOOL_RE.findall(namespace[1].split("} // namespace")[0]):
            required = {f: t for f, optional, t in _FIELD_RE.findall(fields) if not optional}
            tools[name or bare_name] = required
    users = _USER_RE.findall(text)
    return PromptView(
        effort=Effort(effort.group(1)) if effort else Effort.MEDIUM,
        tools=tools,
        user_text=users[-1] if users else text[-200:],
        chat=text.endswith("<|start|>assistant"),
    )


class ReplyWriter:
    def __init__(
        self,
        harmony: Harmony,
        efforts: Mapping[Effort, EffortProfile],
        final_share: float,
        seed: int,
    ) -> None:
        self._harmony = harmony
        self._efforts = efforts
        self._final_share = final_share
        self._seed = seed
        self._special = {
            name: harmony.special_id(name)
            for name in (
                "<|start|>",
                "<|channel|>",
                "<|message|>",
                "<|end|>",
                "<|return|>",
                "<|call|>",
                "<|constrain|>",
            )
        }

    def logprobs(self, script: Sequence[int], top: int, seed: int | None, request_id: str) -> tuple:
        """Plausible log-probabilities for a reply: the written token the likeliest (it is what
        the mock "sampled"), `top` alternatives below it, best first; seeded as the reply is."""
        rng = random.Random(
            f"logprobs:{seed if seed is not None else f'{self._seed}:{request_id}'}"
        )
        out = []
        for token in script:
            sampled = -rng.expovariate(4.0)
            alternatives = [(token, sampled)]
            logprob = sampled
            while len(alternatives) < top:
                logprob -= rng.expovariate(1.0)
                alternatives.append((rng.randrange(FIRST_SPECIAL_TOKEN), logprob))
            out.append((sampled, tuple(alternatives[:top])))
        return tuple(out)

    def sample_length(self, effort: Effort, rng: random.Random) -> int:
        prior = self._efforts[effort].output_tokens
        return max(4, round(rng.lognormvariate(math.log(prior.median_tokens), prior.sigma)))

    def write(
        self,
        prompt_token_ids: Sequence[int],
        seed: int | None,
        request_id: str,
        constraint: OutputConstraint | None = None,
    ) -> list[int]:
        """The full reply, ending in `<|return|>` or `<|call|>`; the engine truncates at max_tokens."""
        rng = random.Random(seed if seed is not None else f"{self._seed}:{request_id}")
        view = read_prompt(self._harmony, prompt_token_ids)
        total = self.sample_length(view.effort, rng)
        if not view.chat:
            return self._prose(total, view.user_text, rng) + [self._special["<|return|>"]]
        if constraint is not None:
            return self._constrained(constraint, total, view, rng)
        called = next((t for t in view.tools if t.lower() in view.user_text.lower()), None)
        if called is not None:
            return self._analysis(max(4, total // 4), view, rng) + self._tool_call(
                called, view.tools[called], view.user_text
            )
        final = max(4, round(total * self._final_share))
        return (
            self._analysis(max(4, total - final), view, rng)
            + self._message("final", self._prose(final, view.user_text, rng))
            + [self._special["<|return|>"]]
        )

    def _constrained(
        self, c: OutputConstraint, total: int, view: PromptView, rng: random.Random
    ) -> list[int]:
        """A reply in the shape the constraint allows, as an engine's grammar would hold it."""
        named = [t for t in c.tools if t.name.lower() in view.user_text.lower()]
        call: ToolFormat | None = None
        if not c.final:
            call = (named or [rng.choice(c.tools)])[0]
        elif named:
            call = named[0]
        final = max(4, round(total * self._final_share))
        reasoning = max(4, (total // 4) if call else total - final)
        if c.reasoning_budget is not None:
            reasoning = min(reasoning, c.reasoning_budget)
        analysis = self._analysis(reasoning, view, rng) if reasoning else []
        if call is not None:
            arguments = json.dumps(schema_instance(call.parameters, rng))
            return analysis + self._call(call.name, arguments)
        if c.final_schema is not None:
            body = self._harmony.encode_text(json.dumps(schema_instance(c.final_schema, rng)))
        else:
            body = self._prose(final, view.user_text, rng)
        return analysis + self._message("final", body) + [self._special["<|return|>"]]

    def _analysis(self, length: int, view: PromptView, rng: random.Random) -> list[int]:
        body = self._prose(length, view.user_text, rng)
        return self._message("analysis", body) + [
            self._special["<|end|>"],
            self._special["<|start|>"],
            *self._harmony.encode_text("assistant"),
        ]

    def _message(self, header: str, body: list[int]) -> list[int]:
        return [
            self._special["<|channel|>"],
            *self._harmony.encode_text(header),
            self._special["<|message|>"],
            *body,
        ]

    def _tool_call(self, name: str, fields: dict[str, str], user_text: str) -> list[int]:
        words = [w for w in re.findall(r"[A-Za-z]+", user_text) if w.lower() != name.lower()]
        topic = " ".join(words[-2:]) or name
        arguments = json.dumps({f: _DUMMY.get(t, topic) for f, t in fields.items()})
        return self._call(name, arguments)

    def _call(self, name: str, arguments: str) -> list[int]:
        header = f"commentary to={TOOL_NAMESPACE}.{name} "
        return [
            self._special["<|channel|>"],
            *self._harmony.encode_text(header),
            self._special["<|constrain|>"],
            *self._harmony.encode_text("json"),
            self._special["<|message|>"],
            *self._harmony.encode_text(arguments),
            self._special["<|call|>"],
        ]

    def _prose(self, length: int, topic: str, rng: random.Random) -> list[int]:
        vocabulary = _WORDS + re.findall(r"[A-Za-z]{3,}", topic)[:20]
        tokens: list[int] = []
        while len(tokens) < length:
            words = " ".join(rng.choice(vocabulary) for _ in range(length - len(tokens) + 8))
            tokens += self._harmony.encode_text(" " + words + ".")
        return tokens[:length]

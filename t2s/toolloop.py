"""A schema-constrained tool-calling loop, shared by the spreadsheet agent and the error analyst.

Every turn the model sees the whole conversation and emits exactly one step, a JSON object
decoded under a schema built from the tool set::

    {"tool": "<name>", "thought": "...", "section": "...", "args": {...}}

The schema is an `anyOf` with one branch per tool, so under a llama.cpp grammar the `args` the
model writes always fit the tool it named. The tool comes first: the branches then part at once,
and the grammar follows one branch instead of all of them through the thought (a third less
CPU per reply with the agent's six tools). The reply is still validated (other back-ends may
not enforce schemas): an invalid step becomes an observation saying what was wrong, and costs
a turn, never a crash. A tool that raises fails its step; the loop goes on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import jsonschema

from t2s.errors import IncompleteReply, ModelError
from t2s.models.base import ChatOptions, Model, Usage
from t2s.trajectory import Step

THOUGHT_CHARS = 120  # llama.cpp grammars for long bounded strings get slow
SECTION_CHARS = 120
OBSERVATION_CHARS = 3000
REPLY_CHARS_KEPT = 2000  # of an invalid reply, in the conversation


class ToolFailure(Exception):
    """Raised by a handler: the step failed for `reason` (one line), the loop goes on.

    `observation` is what the model should still see, e.g. the traceback of a failed script.
    """

    def __init__(self, reason: str, observation: str = ""):
        super().__init__(reason)
        self.observation = observation


@dataclass
class Tool:
    name: str
    description: str
    args_schema: dict  # JSON schema of the "args" object
    handler: Callable[[dict], str]  # args -> observation
    finishes: bool = False  # a successful call ends the loop
    example_args: dict | None = None  # shown in prompts; by default a placeholder of the schema

    def example(self) -> str:
        args = self.example_args if self.example_args is not None else _example(self.args_schema)
        return json.dumps({"tool": self.name, "args": args})


@dataclass
class LoopBudget:
    turns: int = 20
    tokens: int = 60000  # prompt + completion tokens over the whole loop
    reply_tokens: int = 512  # most tokens of one reply


@dataclass
class LoopResult:
    messages: list[dict]
    steps: list[Step]
    usage: Usage
    turns: int
    stopped: str  # "finish" | "turns" | "tokens" | "error"
    error: str = ""
    model_seconds: float = 0.0
    tool_seconds: float = 0.0
    final_args: dict | None = None  # the args of the successful finishing call

    @property
    def finished(self) -> bool:
        return self.stopped == "finish"


def step_schema(tools: list[Tool], sections: list[str] | None = None) -> dict:
    """The schema of one step. `sections`, when given, is the closed list the model picks from."""
    if sections is None:
        section = {"type": "string", "maxLength": SECTION_CHARS}
    else:
        section = {"type": "string", "enum": ["", *dict.fromkeys(sections)]}
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "tool": {"type": "string", "enum": [tool.name]},
                    "thought": {"type": "string", "maxLength": THOUGHT_CHARS},
                    "section": section,
                    "args": tool.args_schema,
                },
                "required": ["tool", "thought", "section", "args"],
                "additionalProperties": False,
            }
            for tool in tools
        ]
    }


def run_tool_loop(
    model: Model,
    messages: list[dict],
    tools: list[Tool],
    budget: LoopBudget,
    *,
    sections: list[str] | None = None,
    observation_chars: int = OBSERVATION_CHARS,
    seed: int | None = 0,
    temperature: float = 0.0,
) -> LoopResult:
    """Run turns until a finishing tool succeeds or a budget runs out; never raises for the model."""
    if not tools:
        raise ValueError("a tool loop needs at least one tool")
    by_name = {tool.name: tool for tool in tools}
    options = ChatOptions(
        schema=step_schema(tools, sections),
        max_tokens=budget.reply_tokens,
        temperature=temperature,
        seed=seed,
    )
    messages = [dict(message) for message in messages]
    result = LoopResult(messages=messages, steps=[], usage=Usage(), turns=0, stopped="turns")
    while True:
        if result.turns >= budget.turns:
            result.stopped = "turns"
            break
        used = result.usage.prompt_tokens + result.usage.completion_tokens
        if used >= budget.tokens:
            result.stopped = "tokens"
            break
        started = time.perf_counter()
        try:
            reply = model.chat(messages, options)
        except IncompleteReply as error:
            # A reply cut off at the token limit is one wasted turn, not the end of the loop:
            # the model is told to be brief and the budgets decide when to stop.
            result.model_seconds += time.perf_counter() - started
            result.usage = result.usage + (error.usage or Usage())
            result.turns += 1
            result.steps.append(_cut_off_step(result.turns, str(error)))
            messages.append({"role": "user", "content": CUT_OFF_MESSAGE})
            continue
        except ModelError as error:
            result.model_seconds += time.perf_counter() - started
            result.stopped, result.error = "error", str(error)
            break
        result.model_seconds += time.perf_counter() - started
        result.usage = result.usage + reply.usage
        result.turns += 1
        step = _take_step(reply.text, result.turns, by_name, observation_chars)
        result.tool_seconds += step.seconds
        result.steps.append(step)
        kept = reply.text if step.tool else _cut(reply.text, REPLY_CHARS_KEPT)
        messages.append({"role": "assistant", "content": kept})
        messages.append({"role": "user", "content": _observation_message(step, tools)})
        if step.ok and by_name[step.tool].finishes:
            result.stopped, result.final_args = "finish", step.args
            break
    return result


CUT_OFF_MESSAGE = (
    "Your last reply was cut off before its JSON ended. Reply again with one short step: "
    "a brief thought and compact args."
)


def _cut_off_step(turn: int, reason: str) -> Step:
    return Step(
        turn=turn, thought="", section="", tool="", args={}, observation="", ok=False,
        seconds=0.0, error=f"invalid step: {reason}",
    )


def _take_step(text: str, turn: int, tools: dict[str, Tool], limit: int) -> Step:
    try:
        call = json.loads(text)
        problem = _invalid(call, tools)
    except ValueError as error:
        call, problem = None, f"the reply is not JSON ({error})"
    if problem:
        thought = call.get("thought") if isinstance(call, dict) else ""
        return Step(
            turn=turn,
            thought=_cut(thought if isinstance(thought, str) else "", THOUGHT_CHARS),
            section="",
            tool="",
            args={},
            observation="",
            ok=False,
            seconds=0.0,
            error=f"invalid step: {problem}",
        )
    tool = tools[call["tool"]]
    started = time.perf_counter()
    try:
        observation, ok, error = tool.handler(call["args"]), True, ""
    except ToolFailure as failure:
        observation, ok, error = failure.observation, False, str(failure) or "failed"
    except Exception as failure:  # noqa: BLE001 - a broken tool fails its step, not the rollout
        observation, ok, error = "", False, f"{type(failure).__name__}: {failure}"
    return Step(
        turn=turn,
        thought=call["thought"],
        section=call["section"],
        tool=tool.name,
        args=call["args"],
        observation=_cut(str(observation), limit),
        ok=ok,
        seconds=time.perf_counter() - started,
        error=error.splitlines()[0][:500] if error else "",
    )


def _invalid(call, tools: dict[str, Tool]) -> str:
    """What is wrong with a parsed step, in one line; "" when it is a valid call."""
    if not isinstance(call, dict):
        return f"expected a JSON object, got {type(call).__name__}"
    missing = [key for key in ("thought", "section", "tool", "args") if key not in call]
    if missing:
        return f"missing {', '.join(missing)}"
    extra = sorted(set(call) - {"thought", "section", "tool", "args"})
    if extra:
        return f"unexpected key(s) {', '.join(extra)}"
    if not isinstance(call["thought"], str) or not isinstance(call["section"], str):
        return "thought and section must be strings"
    if call["tool"] not in tools:
        return f"unknown tool {call['tool']!r}; use one of {', '.join(tools)}"
    schema = tools[call["tool"]].args_schema
    error = jsonschema.exceptions.best_match(
        jsonschema.validators.validator_for(schema)(schema).iter_errors(call["args"])
    )
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path)
        return f"args{'/' + where if where else ''}: {_cut(error.message, 200)}"
    return ""


def _observation_message(step: Step, tools: list[Tool]) -> str:
    if not step.tool:
        names = ", ".join(tool.name for tool in tools)
        return (
            f"Your reply was not a valid step: {step.error.removeprefix('invalid step: ')}. "
            'Reply with one JSON object {"tool": ..., "thought": ..., "section": ..., '
            f'"args": {{...}}}} where tool is one of: {names}.'
        )
    if not step.ok:
        detail = f"\n{step.observation}" if step.observation else ""
        return f"[{step.tool}] failed: {step.error}{detail}"
    return f"[{step.tool}] {step.observation}"


def describe_tools(tools: list[Tool]) -> str:
    """One line per tool for a system prompt: what it does and the shape of its call."""
    return "\n".join(f"- {tool.name}: {tool.description} Call: {tool.example()}" for tool in tools)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - limit} characters cut ...]\n{text[-half:]}"


def _example(schema: dict):
    """A placeholder value that shows the shape of `schema` in a prompt."""
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object":
        properties = schema.get("properties", {})
        if not properties and isinstance(schema.get("additionalProperties"), dict):
            return {"<key>": _example(schema["additionalProperties"])}
        return {name: _example(sub) for name, sub in properties.items()}
    if kind == "array":
        return [_example(schema.get("items", {}))]
    if kind in ("integer", "number"):
        return 0
    return "..."

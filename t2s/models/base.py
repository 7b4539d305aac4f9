"""The one model interface every stage talks to, whatever the back-end."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from t2s.errors import IncompleteReply, ModelError

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass
class ChatOptions:
    schema: dict | None = None  # a JSON schema: the reply is decoded under it and must parse
    max_tokens: int = 512
    temperature: float = 0.0
    seed: int | None = 0
    stop: list[str] | None = None


@dataclass
class Usage:
    prompt_tokens: int = 0  # tokens in the prompt
    completion_tokens: int = 0
    prompt_eval_tokens: int = 0  # prompt tokens actually evaluated (the rest came from the cache)

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.prompt_eval_tokens + other.prompt_eval_tokens,
        )


@dataclass
class ChatReply:
    text: str
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0
    model: str = ""

    def json(self) -> Any:
        """The reply parsed as JSON; a ModelError (not a traceback) when it is not JSON."""
        try:
            return json.loads(self.text)
        except ValueError as error:
            snippet = self.text[:80].replace("\n", " ")
            raise ModelError(f"model reply is not valid JSON ({error.msg}): {snippet!r}") from None


@runtime_checkable
class Model(Protocol):
    name: str

    def chat(self, messages: list[Message], options: ChatOptions | None = None) -> ChatReply: ...


@runtime_checkable
class ModelSource(Protocol):
    """A picklable description of a model; `load` runs in the worker that will use it."""

    name: str

    # `parallel` is how many threads of the worker will call `chat` at once on the returned
    # model: it must be safe for that many concurrent callers (and may batch their decoding).
    def load(
        self, *, threads: int | None = None, worker_index: int = 0, parallel: int = 1
    ) -> Model: ...

    # Optional: `prepare()` runs in the pool's parent before any worker starts. It may check
    # files and import libraries, never load a model.


# llama.cpp's grammar nests one rule per allowed repetition: far longer bounds crash its parser.
GRAMMAR_MAX_REPEAT = 1000


def largest_bound(schema: Any) -> int:
    """The largest maxLength / maxItems anywhere in `schema` (0 when there is none)."""
    if isinstance(schema, list):
        return max((largest_bound(part) for part in schema), default=0)
    if not isinstance(schema, dict):
        return 0
    own = [v for k, v in schema.items() if k in ("maxLength", "maxItems") and isinstance(v, int)]
    return max(own + [largest_bound(value) for value in schema.values()], default=0)


def check_schema(schema: Any) -> None:
    """ModelError "invalid JSON schema: ..." unless `schema` is a valid JSON schema object."""
    import jsonschema

    if not isinstance(schema, dict):
        raise ModelError(f"invalid JSON schema: expected an object, got {type(schema).__name__}")
    try:
        json.dumps(schema)
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except (TypeError, ValueError) as error:
        raise ModelError(f"invalid JSON schema: {error}") from None
    except jsonschema.SchemaError as error:
        where = "/".join(str(part) for part in error.absolute_path) or "top level"
        raise ModelError(f"invalid JSON schema: {error.message} (at {where})") from None


def bounded_schema(schema: Any, max_chars: int, max_items: int) -> Any:
    """A copy of `schema` whose strings and arrays without an upper bound get one.

    Anything valid under the copy is valid under the original; a grammar built from the copy
    cannot run on forever inside one string or list, so a retry fits its token budget.
    """
    if isinstance(schema, list):
        return [bounded_schema(part, max_chars, max_items) for part in schema]
    if not isinstance(schema, dict):
        return schema
    bounded = {key: bounded_schema(value, max_chars, max_items) for key, value in schema.items()}
    types = schema.get("type")
    types = types if isinstance(types, list) else [types]
    unconstrained = not any(key in schema for key in ("enum", "const", "pattern", "format"))
    if "string" in types and "maxLength" not in schema and unconstrained:
        bounded["maxLength"] = max(max_chars, schema.get("minLength", 0))
    if "array" in types and "maxItems" not in schema:
        bounded["maxItems"] = max(max_items, schema.get("minItems", 0))
    return bounded


class SchemaChat:
    """`chat` for back-ends that implement `_complete`: with a schema, a reply cut off by
    max_tokens is generated again under bounded strings (see complete_under_schema)."""

    def chat(self, messages: list[Message], options: ChatOptions | None = None) -> ChatReply:
        options = options or ChatOptions()
        if options.schema is None:
            return self._complete(messages, options, None, options.max_tokens)[0]
        return complete_under_schema(
            lambda schema, max_tokens: self._complete(messages, options, schema, max_tokens),
            options,
        )

    def _complete(self, messages, options, schema, max_tokens) -> tuple[ChatReply, bool]:
        """The reply, and whether max_tokens (or the context) cut it off."""
        raise NotImplementedError


def complete_under_schema(complete, options: ChatOptions) -> ChatReply:
    """Run `complete(schema, max_tokens) -> (ChatReply, truncated)` until the reply parses.

    A reply cut off at max_tokens is never patched up (closing brackets could change its
    meaning): it is generated again with twice the budget under `bounded_schema`, and if that
    is cut off too the caller gets a ModelError.
    """
    check_schema(options.schema)
    schema, budget = options.schema, options.max_tokens
    usage, seconds = Usage(), 0.0
    for retry in (False, True):
        if retry:
            budget *= 2
            max_chars = min(budget // 4, GRAMMAR_MAX_REPEAT)
            schema = bounded_schema(options.schema, max_chars=max_chars, max_items=8)
        reply, truncated = complete(schema, budget)
        usage, seconds = usage + reply.usage, seconds + reply.seconds
        if not truncated:
            try:
                json.loads(reply.text)
            except ValueError:
                pass
            else:
                return ChatReply(reply.text, usage, seconds, reply.model)
    raise IncompleteReply(
        f"the model did not finish a JSON reply within {budget} tokens even with bounded "
        f"strings; raise max_tokens (now {options.max_tokens}) or simplify the schema",
        usage,
        seconds,
    )

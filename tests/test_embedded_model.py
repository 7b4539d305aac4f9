"""The embedded SmolLM2 model, for real: loading, grammar-constrained JSON, prefix reuse."""

import jsonschema
import pytest

from t2s.errors import ModelError
from t2s.models import LlamaSource
from t2s.models.base import ChatOptions

pytestmark = pytest.mark.model

REPLY_SCHEMA = {
    "type": "object",
    "properties": {
        "tool": {"type": "string", "enum": ["read", "write", "finish"]},
        "thought": {"type": "string", "maxLength": 24},
        "count": {"type": "integer"},
        "cells": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 2},
    },
    "required": ["tool", "thought", "count", "cells"],
    "additionalProperties": False,
}

SYSTEM = {"role": "system", "content": "You are a spreadsheet agent. Reply with one JSON object."}


@pytest.fixture(scope="module")
def model(request):
    from conftest import EMBEDDED_MODEL

    if not EMBEDDED_MODEL.exists():
        pytest.fail(f"{EMBEDDED_MODEL} is missing: run `make model`")
    return LlamaSource(EMBEDDED_MODEL, n_ctx=2048).load(threads=1)


def test_it_loads_and_answers(model):
    reply = model.chat([{"role": "user", "content": "Say hello."}], ChatOptions(max_tokens=12))
    assert model.name == "SmolLM2-135M-Instruct.Q4_1"
    assert reply.text.strip()
    assert 0 < reply.usage.completion_tokens <= 12
    assert reply.usage.prompt_tokens > 5 and reply.seconds > 0


def test_twenty_schema_constrained_replies_all_parse_and_validate(model):
    tasks = [
        "Sum column B into B10.", "Read sheet1.", "Bold the header row.", "Delete empty rows.",
        "Sort by date.", "Find the maximum in C.", "Copy A1 to D1.", "Count rows with 'x'.",
        "Average of D2:D9.", "Finish the task.", "Write 5 into A2.", "Rename the sheet.",
        "Fill down column E.", "Merge A1:B1.", "Clear column F.", "Add a total row.",
        "Read cell Z99.", "Write today's date in A1.", "Transpose A1:C3.", "Check the totals.",
    ]  # fmt: skip
    for seed, task in enumerate(tasks):
        reply = model.chat(
            [SYSTEM, {"role": "user", "content": task}],
            ChatOptions(schema=REPLY_SCHEMA, max_tokens=80, temperature=0.7, seed=seed),
        )
        jsonschema.validate(reply.json(), REPLY_SCHEMA)


def test_a_second_agent_turn_evaluates_only_the_new_tokens(model):
    options = ChatOptions(schema=REPLY_SCHEMA, max_tokens=80)
    conversation = [
        {"role": "system", "content": "You fix spreadsheets for an accounting team. " * 8},
        {"role": "user", "content": "Task: put the sum of B2:B9 in B10."},
    ]
    first = model.chat(conversation, options)
    conversation += [
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "Observation: B2:B9 hold 1..8."},
    ]
    second = model.chat(conversation, options)
    new_tokens = second.usage.prompt_tokens - first.usage.prompt_tokens
    assert second.usage.prompt_eval_tokens < first.usage.prompt_eval_tokens
    # Only the assistant's reply and the new message are evaluated, not the shared prefix.
    assert second.usage.prompt_eval_tokens <= new_tokens + 2
    assert (
        second.usage.prompt_tokens - second.usage.prompt_eval_tokens
        >= first.usage.prompt_tokens - 2
    )

    # Reusing the cache does not change the answer: a fresh model says the same thing.
    fresh = LlamaSource(model.llama.model_path, n_ctx=2048).load(threads=1)
    again = fresh.chat(conversation, options)
    assert again.text == second.text
    assert again.usage.prompt_eval_tokens == again.usage.prompt_tokens


def test_a_reply_cut_off_by_max_tokens_is_regenerated_to_fit(model):
    schema = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}
    reply = model.chat(
        [{"role": "user", "content": "Write a very long story about a dragon."}],
        ChatOptions(schema=schema, max_tokens=10),
    )
    story = reply.json()["story"]
    assert len(story) <= 20 // 4  # the retry bounded the string to fit twice the budget
    assert reply.usage.completion_tokens > 10  # both attempts are counted


def test_an_invalid_schema_is_a_model_error(model):
    with pytest.raises(ModelError, match="invalid JSON schema"):
        model.chat([{"role": "user", "content": "hi"}], ChatOptions(schema={"type": "objekt"}))


def test_a_schema_llama_cpp_cannot_compile_is_refused_not_ignored(model):
    schema = {"$ref": "https://example.invalid/schema.json"}
    with pytest.raises(ModelError, match="invalid JSON schema: llama.cpp cannot use it"):
        model.chat([{"role": "user", "content": "hi"}], ChatOptions(schema=schema))


def test_a_prompt_longer_than_the_context_is_a_model_error(model):
    huge = "spreadsheet " * 3000
    with pytest.raises(ModelError, match="does not fit the model's context of 2048 tokens"):
        model.chat([{"role": "user", "content": huge}], ChatOptions(max_tokens=8))


def test_a_bound_too_long_for_llama_cpp_grammar_is_refused_instead_of_crashing(model):
    schema = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 20000}}}
    with pytest.raises(ModelError, match="maxLength/maxItems of 20000 is more than llama.cpp"):
        model.chat([{"role": "user", "content": "hi"}], ChatOptions(schema=schema))

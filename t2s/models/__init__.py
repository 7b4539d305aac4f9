"""Find a model from what the user typed, and list the GGUF files t2s knows about.

A model spec is one of:

- nothing or ``embedded``: the embedded SmolLM2 GGUF under ``models/`` (``make model``);
- a path to a ``.gguf`` file;
- a name under ``models/`` (``$T2S_MODELS_DIR``), with or without ``.gguf``;
- ``openai:URL[,URL...]#MODEL``: an OpenAI-compatible server (llama.cpp's server, vLLM,
  Ollama), e.g. ``openai:http://127.0.0.1:8080/v1#qwen3-8b``. With several URLs, pool workers
  are spread over them. The API key, if the server wants one, comes from ``$OPENAI_API_KEY``.

For a GGUF, ``$T2S_CTX`` sets the context size (default 4096) and ``$T2S_GPU_LAYERS`` how many
layers go to the GPU (default 0; -1 for all), for every command and every pool worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from t2s.embedded import EMBEDDED_MODEL_FILE, models_dir
from t2s.errors import ConfigError, ModelError
from t2s.models.base import ChatOptions, ChatReply, Model, ModelSource, Usage
from t2s.models.gguf import GGUFInfo, read_gguf
from t2s.models.llama import LlamaSource
from t2s.models.openai import OpenAISource

__all__ = [
    "ChatOptions",
    "ChatReply",
    "GGUFInfo",
    "ListedModel",
    "LlamaSource",
    "Model",
    "ModelSource",
    "OpenAISource",
    "Usage",
    "list_models",
    "resolve_model",
]

OPENAI_PREFIX = "openai:"


def resolve_model(spec: str | None = None, **options) -> ModelSource:
    """A ModelSource for `spec` (see the module docstring); nothing is loaded here.

    `options` go to the source: n_ctx, gpu_layers, n_batch for a GGUF; api_key, timeout for
    a server.
    """
    if spec is not None and spec.startswith(OPENAI_PREFIX):
        return _openai_source(spec, **options)
    _llama_options_from_environment(options)
    if spec in (None, "", "embedded"):
        path = models_dir() / EMBEDDED_MODEL_FILE
        if not path.is_file():
            raise ModelError(f"the embedded model {path} is missing: run `make model`")
        return LlamaSource(str(path), **options)
    path = _find_gguf(spec)
    read_gguf(path)  # a foreign or truncated file is refused before any work starts
    return LlamaSource(str(path), **options)


def _llama_options_from_environment(options: dict) -> None:
    settings = (("T2S_CTX", "n_ctx", 256), ("T2S_GPU_LAYERS", "gpu_layers", -1))
    for variable, option, smallest in settings:
        value = os.environ.get(variable, "").strip()
        if not value or option in options:
            continue
        try:
            number = int(value)
        except ValueError:
            number = smallest - 1
        if number < smallest:
            raise ConfigError(f"{variable}={value!r} is not a whole number of at least {smallest}")
        options[option] = number


def _openai_source(spec: str, **options) -> OpenAISource:
    urls, _, model = spec[len(OPENAI_PREFIX) :].partition("#")
    base_urls = [url.strip() for url in urls.split(",") if url.strip()]
    if not base_urls or not model.strip():
        raise ModelError(
            f"bad model spec {spec!r}: use openai:URL[,URL...]#MODEL, "
            "e.g. openai:http://127.0.0.1:8080/v1#qwen3-8b"
        )
    for url in base_urls:
        if not url.startswith(("http://", "https://")):
            raise ModelError(f"bad server URL {url!r} in {spec!r}: it must start with http://")
    options.setdefault("api_key", os.environ.get("OPENAI_API_KEY"))
    return OpenAISource(base_urls, model.strip(), **options)


def _find_gguf(spec: str) -> Path:
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return path
    directory = models_dir()
    for candidate in (directory / spec, directory / f"{spec}.gguf"):
        if candidate.suffix == ".gguf" and candidate.is_file():
            return candidate
    raise ModelError(
        f"model '{spec}' not found under {directory}/: pass a .gguf path or a name from "
        "`t2s models` (run `make model` for the embedded one)"
    )


def list_models(directory: Path | str | None = None) -> list[ListedModel]:
    """Every .gguf under `directory` (default models/), each with its metadata or why not."""
    directory = Path(directory) if directory is not None else models_dir()
    if not directory.is_dir():
        raise ModelError(f"model directory {directory} does not exist; run `make model`")
    listed = []
    for path in sorted(directory.glob("*.gguf"), key=lambda path: path.name.lower()):
        try:
            listed.append(ListedModel(path, read_gguf(path), None))
        except ModelError as error:
            listed.append(ListedModel(path, None, str(error)))
    return listed


@dataclass
class ListedModel:
    """A file found by `list_models`: its metadata, or the reason it could not be read."""

    path: Path
    info: GGUFInfo | None
    problem: str | None

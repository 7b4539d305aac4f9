"""The OpenAI-compatible back-end: llama.cpp's server, vLLM, Ollama, over stdlib urllib.

Several base URLs spread pool workers over several servers: worker i starts at
`base_urls[i % n]` and moves on to the next URL when its server cannot be reached.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from t2s.errors import ModelError
from t2s.models.base import ChatReply, SchemaChat, Usage


@dataclass
class OpenAISource:
    base_urls: list[str]
    model: str
    api_key: str | None = None
    timeout: float = 600.0
    name: str = ""

    def __post_init__(self):
        self.base_urls = [url.rstrip("/") for url in self.base_urls if url.strip()]
        if not self.base_urls:
            raise ModelError("an OpenAI-compatible model needs at least one base URL")
        self.name = self.name or self.model

    def prepare(self) -> None:
        """Before any work starts: at least one server must answer, or the run stops here
        with one line instead of recording every task as failed."""
        failures = []
        for url in self.base_urls:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=min(self.timeout, 10)):
                    return
            except urllib.error.HTTPError:
                return  # it answered: a server that does not list models can still chat
            except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
                failures.append(f"{url} ({getattr(error, 'reason', error)})")
        raise ModelError(f"cannot reach {'; '.join(failures)}; start the server or fix --model")

    def load(
        self, *, threads: int | None = None, worker_index: int = 0, parallel: int = 1
    ) -> OpenAIModel:
        # Concurrent callers are concurrent requests: the server batches them (llama.cpp's
        # server needs --parallel for that), so nothing here depends on `parallel`.
        start = worker_index % len(self.base_urls)
        urls = self.base_urls[start:] + self.base_urls[:start]
        return OpenAIModel(urls, self.model, self.api_key, self.timeout, self.name)


class _Unreachable(Exception):
    """The server did not answer at all (as opposed to answering with an error)."""


@dataclass
class OpenAIModel(SchemaChat):
    """Safe to call from several threads: each call is its own request, and the one piece of
    shared state, `_json_object_servers`, only ever grows (a race costs one extra request)."""

    base_urls: list[str]  # the preferred server first
    model: str
    api_key: str | None = None
    timeout: float = 600.0
    name: str = ""
    # Servers that rejected OpenAI's "json_schema" response format and took
    # llama-cpp-python's {"type": "json_object", "schema": ...} instead.
    _json_object_servers: set = field(default_factory=set)

    def _complete(self, messages, options, schema, max_tokens) -> tuple[ChatReply, bool]:
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": options.temperature,
        }
        if options.seed is not None:
            body["seed"] = options.seed
        if options.stop and schema is None:
            body["stop"] = options.stop
        started = time.perf_counter()
        response = self._post_to_any(body, schema)
        seconds = time.perf_counter() - started
        try:
            choice = response["choices"][0]
            text = choice["message"]["content"] or ""
            counts = response.get("usage") or {}
        except (KeyError, IndexError, TypeError):
            raise ModelError(
                f"the server's reply is not an OpenAI chat completion: {str(response)[:120]!r}"
            ) from None
        prompt_tokens = counts.get("prompt_tokens", 0)
        # llama.cpp's server reports how much of the prompt came from its cache; others do not,
        # so by default every prompt token counts as evaluated.
        cached = (counts.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        usage = Usage(prompt_tokens, counts.get("completion_tokens", 0), prompt_tokens - cached)
        reply = ChatReply(text, usage, seconds, self.name)
        return reply, choice.get("finish_reason") == "length"

    def _post_to_any(self, body: dict, schema: dict | None) -> dict:
        failures = []
        for url in self.base_urls:
            try:
                return self._post(url, body, schema)
            except _Unreachable as reason:
                failures.append(f"{url} ({reason})")
        raise ModelError(f"cannot reach {'; '.join(failures)}; start the server or fix --model")

    def _post(self, url: str, body: dict, schema: dict | None) -> dict:
        if schema is None:
            return self._request(url, body)
        if url not in self._json_object_servers:
            response_format = {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": schema, "strict": True},
            }
            try:
                return self._request(url, {**body, "response_format": response_format})
            except ModelError as error:
                if "response_format" not in str(error):
                    raise
            self._json_object_servers.add(url)
        return self._request(
            url, {**body, "response_format": {"type": "json_object", "schema": schema}}
        )

    def _request(self, url: str, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            f"{url}/chat/completions", json.dumps(body).encode(), headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                payload = answer.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace").replace("\n", " ")[:300]
            raise ModelError(f"{url} answered HTTP {error.code}: {detail}") from None
        except urllib.error.URLError as error:
            raise _Unreachable(error.reason) from None
        except (ConnectionError, TimeoutError) as error:
            raise _Unreachable(error) from None
        try:
            return json.loads(payload)
        except ValueError:
            raise ModelError(f"{url} answered with something that is not JSON") from None

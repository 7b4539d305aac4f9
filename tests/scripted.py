"""A deterministic scripted model for unit tests of logic (never used outside tests/)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from t2s.models.base import ChatOptions, ChatReply, Usage

Reply = str | dict | list | Callable[[list[dict], ChatOptions], Any]


class ScriptedModel:
    """Answers each chat call with the next scripted reply.

    A reply is a string (returned as is), a dict or list (returned as JSON), or a function of
    (messages, options) returning either. When the script runs out, the last reply repeats.
    Safe to call from several threads: each call takes the next reply exactly once.
    """

    def __init__(self, replies: list[Reply], name: str = "scripted"):
        if not replies:
            raise ValueError("a scripted model needs at least one reply")
        self.replies = list(replies)
        self.name = name
        self.calls: list[tuple[list[dict], ChatOptions]] = []
        self._calls_lock = threading.Lock()

    def chat(self, messages, options=None):
        options = options or ChatOptions()
        with self._calls_lock:
            index = min(len(self.calls), len(self.replies) - 1)
            self.calls.append(([dict(m) for m in messages], options))
        reply = self.replies[index]
        if callable(reply):
            reply = reply(messages, options)
        text = reply if isinstance(reply, str) else json.dumps(reply)
        prompt = sum(len(m["content"]) for m in messages) // 4
        return ChatReply(text, Usage(prompt, len(text) // 4, prompt), 0.0, self.name)


@dataclass
class ScriptedSource:
    """A ModelSource for the pool: every worker gets its own fresh ScriptedModel."""

    replies: list[Reply]
    name: str = "scripted"
    loads: list[int] = field(default_factory=list)  # worker_index of each load
    parallels: list[int] = field(default_factory=list)  # parallel of each load

    def load(self, *, threads=None, worker_index=0, parallel=1):
        self.loads.append(worker_index)
        self.parallels.append(parallel)
        return ScriptedModel(self.replies, self.name)

"""`make demo` (interim): the embedded model in a 2-worker pool answering under a JSON schema."""

from __future__ import annotations

import os
import sys
import time

from t2s.errors import T2SError
from t2s.models import resolve_model
from t2s.models.base import ChatOptions
from t2s.models.gguf import read_gguf
from t2s.pool import run_pool

STEP_SCHEMA = {
    "type": "object",
    "properties": {
        "tool": {"type": "string", "enum": ["read_cells", "write_cells", "finish"]},
        "range": {"type": "string", "maxLength": 12},
        "thought": {"type": "string", "maxLength": 60},
    },
    "required": ["tool", "range", "thought"],
    "additionalProperties": False,
}

TASKS = [
    "Put the sum of B2:B9 into B10.",
    "Read the header row of Sheet1.",
    "Copy A1:A5 to C1:C5.",
    "Write 'Total' in A10.",
    "Find the largest value in column D.",
    "Clear the cells E2:E20.",
]

SYSTEM = (
    "You are a spreadsheet agent. Choose the next tool call as JSON: tool (read_cells, "
    "write_cells or finish), range (A1 notation) and a short thought."
)


def next_step(model, task: str) -> dict:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task}]
    reply = model.chat(messages, ChatOptions(schema=STEP_SCHEMA, max_tokens=96))
    return {"step": reply.json(), "tokens": reply.usage.completion_tokens, "seconds": reply.seconds}


def main() -> int:
    try:
        source = resolve_model("embedded", n_ctx=2048)
        info = read_gguf(source.path)
        print(
            f"Model: {info.name} ({info.architecture}, {info.size_label} parameters, "
            f"{info.quantization}, {info.file_size / 1e6:.0f} MB) from {source.path}"
        )
        print(f"Pool: 2 worker processes, each loads the model itself; parent pid {os.getpid()}")
        print(f"Asking for one schema-constrained agent step for each of {len(TASKS)} tasks...\n")
        started = time.perf_counter()
        results = sorted(
            run_pool(next_step, TASKS, model=source, workers=2, timeout=120, label="demo"),
            key=lambda result: result.index,
        )
        wall = time.perf_counter() - started
    except T2SError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    tokens, generating = 0, 0.0
    for result in results:
        print(f"  {result.item}")
        if result.ok:
            tokens += result.value["tokens"]
            generating += result.value["seconds"]
            print(f"    -> {result.value['step']}  ({result.value['tokens']} tokens)")
        else:
            print(f"    -> failed: {result.error}")
    failed = sum(not result.ok for result in results)
    print(
        f"\n{len(results) - failed}/{len(results)} replies parsed under the schema; "
        f"{tokens} tokens generated in {wall:.1f}s wall time, including model loads: "
        f"{tokens / wall:.1f} tokens/s across the pool ({tokens / max(generating, 1e-9):.1f} "
        "tokens/s per worker while generating)."
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

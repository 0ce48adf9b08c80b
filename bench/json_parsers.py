"""stdlib json vs orjson on the bodies the lean transport encodes and the replies it decodes.

Three shapes: a chat body with two short messages and its reply (the per-record case of an ``ask`` step),
and a ``describe_image`` body carrying a 300 kB base64 image. Microseconds per operation, best of 5.

    python bench/json_parsers.py
"""

from __future__ import annotations

import base64
import json
import os
import timeit

import orjson

SMALL = {"model": "gpt-4o-mini", "messages": [
    {"role": "system", "content": "You are a helpful support agent. Answer in one sentence."},
    {"role": "user", "content": "Reply to: the mug arrived quickly and looks great, but the handle is a bit small."}]}
REPLY = json.dumps({
    "id": "chatcmpl-123", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "Thank you for your review! We are glad the mug arrived quickly. " * 3}}],
    "usage": {"prompt_tokens": 42, "completion_tokens": 40, "total_tokens": 82}}).encode()
IMAGE = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
    {"type": "text", "text": "Describe the image."},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                       + base64.b64encode(os.urandom(225_000)).decode(), "detail": "low"}}]}]}


def best(fn: object, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6  # type: ignore[arg-type]


def main() -> None:
    rows = [
        ("encode chat body", lambda: json.dumps(SMALL).encode(), lambda: orjson.dumps(SMALL), 20000),
        ("decode chat reply", lambda: json.loads(REPLY), lambda: orjson.loads(REPLY), 20000),
        ("encode image body (300 kB)", lambda: json.dumps(IMAGE).encode(), lambda: orjson.dumps(IMAGE), 200),
    ]
    print(f"load average {os.getloadavg()[0]:.2f}; best of 5")
    print("| operation | stdlib json (µs) | orjson (µs) | orjson / json |")
    print("|---|---|---|---|")
    for name, std, fast, number in rows:
        a, b = best(std, number), best(fast, number)
        print(f"| {name} | {a:.1f} | {b:.1f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()

"""Sentiment analyzers: messages per second (``keyword`` and ``vader``), single thread.

Texts are short customer-review-like messages (10 variants × ``--messages``). Each analyzer is built
through the plugin host exactly as a pipeline builds it, warmed up, then timed over all messages.

    python bench/sentiment.py [--messages 20000]
"""

from __future__ import annotations

import argparse
import time

from oaipipe.base import Context
from oaipipe.plugins import PluginHost

TEXTS = [
    "I love this mug, it is wonderful and arrived quickly!",
    "Terrible service, the handle broke and I want a refund.",
    "The parcel arrived on Tuesday.",
    "Great value and fast delivery, thanks!",
    "Awful. Never again.",
    "Not bad at all, but the colour is a little dull.",
    "Thank you for your message about the mug; we are sorry it broke and will send a replacement.",
    "It works. Nothing special.",
    "ABSOLUTELY FANTASTIC!!! :)",
    "The support agent was rude and unhelpful, very disappointing experience overall.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20000)
    args = ap.parse_args()
    host = PluginHost([])
    messages = [TEXTS[i % len(TEXTS)] + f" #{i}" for i in range(args.messages)]
    print("| analyzer | messages | seconds | messages/s |")
    print("|---|---|---|---|")
    for name in ("keyword", "vader"):
        analyzer = host.build("analyzer", {"type": name}, Context(host=host), key="analyzer")
        for text in messages[:200]:
            analyzer.analyze(text)
        start = time.perf_counter()
        for text in messages:
            analyzer.analyze(text)
        secs = time.perf_counter() - start
        print(f"| {name} | {len(messages)} | {secs:.2f} | {len(messages) / secs:,.0f} |")


if __name__ == "__main__":
    main()

"""Response cache: hit and miss cost (µs per call) and size on disk, SQLite store vs the JSON-file layout.

Fills each store with ``--entries`` answers (realistic replies: 150-900 characters of English text, the
fields of a ``ChatResponse``) through the same front the runner uses (:class:`oaipipe.cache.ResponseCache`:
entry encoding and decoding, the store), then times ``--sample`` hits in random order (through the front,
and the store's own ``get`` alone), ``--sample`` misses and ``--sample // 4`` writes of new answers. The
stores are timed in turn within each of ``--repeat`` passes (so that the load of a shared machine falls on
all of them) and each figure is the median of the passes. The request key is computed before timing (the
runner hashes each request once, whatever the store). The page cache is warm, as it is when a run re-reads
answers it wrote; the first call of a store opened anew is timed apart. Sizes: the bytes of the files, and
the disk blocks they take (``du``). Last, the JSON-file cache is imported into a SQLite file as the first
run after an upgrade does (the migration), timed.

    python bench/cache.py [--entries 100000] [--sample 20000] [--repeat 5] [--stores sqlite sqlite-z files]
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oaipipe.cache import CacheStore, FileStore, ResponseCache
from oaipipe.cache_sqlite import SqliteStore
from oaipipe.types import ChatRequest, ChatResponse, Usage

ROOT = Path(__file__).resolve().parent.parent


def corpus() -> str:
    return " ".join(Path(p).read_text(encoding="utf-8") for p in sorted(glob.glob(str(ROOT / "docs" / "*.md"))))


def request(i: int) -> ChatRequest:
    return ChatRequest(messages=[{"role": "system", "content": "You are a helpful support agent."},
                                 {"role": "user", "content": f"Reply to: review {i}: great mug, slow delivery"}],
                       model="gpt-4o-mini", step="ask:reply")


def response(i: int, text: str) -> ChatResponse:
    rnd = random.Random(i)
    n = rnd.randint(150, 900)
    start = rnd.randint(0, len(text) - n)
    return ChatResponse(text=text[start:start + n], model="gpt-4o-mini-2024-07-18", backend="openai",
                        usage=Usage(40 + i % 30, n // 4, 40 + i % 30 + n // 4), request_id=f"chatcmpl-{i:024x}",
                        latency=0.1 + (i % 100) / 1000, finish_reason="stop")


def disk_usage(path: Path) -> tuple[int, int, int]:
    """(files, bytes of the files, bytes of the disk blocks they take)."""
    n = size = blocks = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            n += 1
            size += st.st_size
            blocks += st.st_blocks * 512
    return n, size, blocks


def per_call(fn: Callable[[Any], Any], items: list[Any]) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - start) / len(items) * 1e6


STORES: dict[str, tuple[str, Callable[[Path], CacheStore]]] = {
    "sqlite": ("sqlite (default)", lambda d: SqliteStore.at(d)),
    "sqlite-z": ("sqlite, compress: true", lambda d: SqliteStore.at(d, compress=True)),
    "files": ("files (one JSON file per entry, before)", lambda d: FileStore.at(d)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--sample", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--stores", nargs="+", choices=list(STORES), default=list(STORES))
    args = ap.parse_args()
    text = corpus()
    entries, sample = args.entries, min(args.sample, args.entries)
    base = Path(tempfile.mkdtemp(prefix="oaipipe-bench-cache-"))
    rows: dict[str, dict[str, Any]] = {}
    caches: dict[str, ResponseCache] = {}
    try:
        for name, make in (STORES[k] for k in args.stores):
            folder = base / str(len(rows))
            cache = ResponseCache(folder, store=make(folder))
            start = time.perf_counter()
            for i in range(entries):
                cache.put(request(i), response(i, text))
            fill = time.perf_counter() - start
            cache.close()
            files, size, blocks = disk_usage(folder)
            cache = ResponseCache(folder, store=make(folder))  # as a new process opens it
            start = time.perf_counter()
            assert cache.get(request(0)) is not None
            opened = (time.perf_counter() - start) * 1e3
            rows[name] = {"folder": folder, "fill_s": fill, "open_ms": opened, "files": files, "size": size,
                          "blocks": blocks, "hit": [], "miss": [], "write": [], "store_hit": []}
            caches[name] = cache
        rnd = random.Random(7)
        for r in range(args.repeat):
            hits = [request(j) for j in rnd.sample(range(entries), sample)]
            hits = [(q, caches[next(iter(caches))].key_for(q)) for q in hits]
            # the store alone on other entries (the same ones would be warmer the second time)
            store_hits = [request(j) for j in rnd.sample(range(entries), sample)]
            store_hits = [(q, caches[next(iter(caches))].key_for(q)) for q in store_hits]
            misses = [request(entries + r * sample + j) for j in range(sample)]
            misses = [(q, caches[next(iter(caches))].key_for(q)) for q in misses]
            new = [(request(10 * entries + r * sample + j), response(j, text)) for j in range(sample // 4)]
            for name, cache in caches.items():
                rows[name]["hit"].append(per_call(lambda p, c=cache: c.get(p[0], p[1]), hits))
                rows[name]["store_hit"].append(per_call(lambda p, s=cache.store: s.get(p[1]), store_hits))
                rows[name]["miss"].append(per_call(lambda p, c=cache: c.get(p[0], p[1]), misses))
                rows[name]["write"].append(per_call(lambda a, c=cache: c.put(a[0], a[1]), new))
        for cache in caches.values():
            assert cache.stats.errors == 0 and cache.stats.hits == args.repeat * sample + 1
            cache.close()
        migrate = None
        if "files" in args.stores:
            folder = rows[STORES["files"][0]]["folder"]
            start = time.perf_counter()
            migrated = ResponseCache(folder)
            assert migrated.get(request(entries - 1)) is not None
            migrate = time.perf_counter() - start
            assert not list(folder.glob("??")) and len(migrated) >= entries
            migrated.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, {entries:,} entries, {sample:,} "
          f"timed hits and misses and {sample // 4:,} writes per pass, median of {args.repeat} passes")
    print()
    print("| store | hit (µs) | of which the store's get (µs) | miss (µs) | write (µs) | first call (ms) | files | "
          f"size (MB) | on disk (MB) | filling {entries:,} (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {statistics.median(r['hit']):.1f} | {statistics.median(r['store_hit']):.1f} | "
              f"{statistics.median(r['miss']):.1f} | "
              f"{statistics.median(r['write']):.1f} | {r['open_ms']:.1f} | {r['files']:,} | {r['size'] / 1e6:.1f} | "
              f"{r['blocks'] / 1e6:.1f} | {r['fill_s']:.1f} |")
    if migrate is not None:
        print()
        print(f"importing the {entries:,}-entry directory cache into the SQLite file (the first open after an "
              f"upgrade): {migrate:.1f} s ({migrate / entries * 1e6:.0f} µs per entry)")


if __name__ == "__main__":
    main()

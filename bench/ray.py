"""Ray (``run.executor: ray``): CPU work, API work, and what the shared limiter and cache cost per call.

Default: a sentiment-only run (vader), 1 process (in the driver) vs Ray with 2 actors on this machine: the
same benchmark as bench/workers.py (same pipeline and table), with ``run.executor: ray``; Ray's own start-up
(a local Ray instance, seconds on a loaded machine) is included in the time, as a user pays it.

``--api``: an ``ask`` + ``sentiment`` pipeline against ``oaipipe serve`` on loopback (no rate limit, a response
cache), in the driver vs on 2 Ray actors (their calls through the limiter actor and the cache actor), then a
``--fresh`` rerun on Ray (every answer from the cache actor); and the round trip of one limiter reservation
and one cache lookup, the price each call pays on a cluster.

    python bench/ray.py [--rows 1000000]
    python bench/ray.py --api [--rows 2000]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

API_PIPELINE = """name: bench-ray-api
backend: {{type: openai, base_url: "{url}", model: gpt-6-luna, concurrency: 16}}
source: {{type: csv, path: rows.csv, id_column: id}}
steps:
  - {{type: ask, prompt: "Reply to: {{text}}", output: reply}}
  - {{type: sentiment, analyzer: vader, input: "{{reply}}", output: mood}}
sinks:
  - {{type: jsonl, path: out.jsonl}}
run: {{workers: 2, pool_min_records: 0}}
"""


def _run(file: Path, *args: str) -> float:
    exe = str(Path(sys.executable).with_name("oaipipe"))
    start = time.perf_counter()
    subprocess.run([exe, "run", str(file), "-q", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def round_trips(n: int = 2000) -> tuple[float, float]:
    """Median µs of one limiter reservation and of one call to an actor method that does nothing but
    answer (what a cache lookup adds to the store's own read), from another actor, on a local Ray."""
    here = str(Path(__file__).resolve().parent)  # this file is ray.py: find the real one
    sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != here]
    sys.modules.pop("ray", None)
    import ray

    from oaipipe.ray_cluster import LimiterActor

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        limiter = ray.remote(num_cpus=0)(LimiterActor).remote(None, None)

        @ray.remote(num_cpus=0)
        class Echo:
            def get(self, key: str) -> None:
                return None

        @ray.remote(num_cpus=1)
        def measure(limiter: object, echo: object, n: int) -> tuple[float, float]:
            def median(call: object) -> float:
                times = []
                for _ in range(n):
                    start = time.perf_counter()
                    ray.get(call())  # type: ignore[operator]
                    times.append(time.perf_counter() - start)
                return statistics.median(times) * 1e6

            return (median(lambda: limiter.reserve.remote("bench", 0)),  # type: ignore[attr-defined]
                    median(lambda: echo.get.remote("k" * 64)))  # type: ignore[attr-defined]

        out: tuple[float, float] = ray.get(measure.remote(limiter, Echo.remote(), n))
        return out
    finally:
        ray.shutdown()


def api(rows: int) -> None:
    from oaipipe.testing import running_server

    with tempfile.TemporaryDirectory() as tmp, running_server() as srv:
        folder = Path(tmp)
        (folder / "rows.csv").write_text("id,text\n" + "".join(f"r{i},I love this mug number {i}\n"
                                                               for i in range(rows)), encoding="utf-8")
        file = folder / "pipeline.yaml"
        file.write_text(API_PIPELINE.format(url=srv.base_url), encoding="utf-8")
        print(f"{rows} rows, ask + vader against oaipipe serve on loopback, {os.cpu_count()} cores\n")
        print("| run | seconds | records/s | calls at the server | load before/after |")
        print("|---|---|---|---|---|")
        for label, args in (("driver (executor local)", ("--fresh", "--no-cache")),
                            ("2 Ray actors", ("--fresh", "--executor", "ray")),
                            ("2 Ray actors, --fresh rerun (cache actor)", ("--fresh", "--executor", "ray"))):
            before, load = srv.stats()["requests"], os.getloadavg()[0]
            seconds = _run(file, *args)
            calls = srv.stats()["requests"] - before
            print(f"| {label} | {seconds:.1f} | {rows / seconds:,.0f} | {calls} | {load:.1f}/{os.getloadavg()[0]:.1f} |",
                  flush=True)
    reserve, lookup = round_trips()
    print(f"\nround trip from an actor: limiter reservation {reserve:.0f} µs, cache actor call {lookup:.0f} µs "
          f"(median of 2000)")


if __name__ == "__main__":
    if "--api" in sys.argv:
        sys.argv.remove("--api")
        rows = int(sys.argv[sys.argv.index("--rows") + 1]) if "--rows" in sys.argv else 2000
        api(rows)
    else:
        import workers

        if "--workers" not in sys.argv:
            sys.argv += ["--workers", "1", "2:ray"]
        workers.main()

"""Peak memory (RSS) of ``oaipipe run`` describing big images at high concurrency.

Writes ``--count`` single-colour PNGs of ``--size``×``--size`` pixels (each ~100-150 KB on disk, a
decompression bomb's shape: 7000×7000 is 49 Mpx, 147 MB once decoded as RGB) and runs a
``describe_image`` pipeline over them on the local backend at ``--concurrency``, in a fresh
``oaipipe run`` process; prints that process's peak RSS (``ru_maxrss`` of the child) and wall time.

    python bench/images.py [--count 32] [--size 7000] [--concurrency 16] [--detail auto]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAKE = """
import sys
from pathlib import Path
from PIL import Image
folder, count, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for i in range(count):
    Image.new("RGB", (size, size), (10 + i * 7 % 240, 120, 200 - i * 5 % 190)).save(folder / f"big_{i:03d}.png")
"""


def make_images(folder: Path, count: int, size: int) -> list[Path]:
    """Written by a child process, so that this process stays small (its pages would count in the next
    child's peak RSS between fork and exec)."""
    subprocess.run([sys.executable, "-c", MAKE, str(folder), str(count), str(size)], check=True)
    return [folder / f"big_{i:03d}.png" for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--size", type=int, default=7000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--detail", default="auto", choices=["auto", "low", "high"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = make_images(folder, args.count, args.size)
        with (folder / "images.csv").open("w", encoding="utf-8") as fh:
            fh.write("id,image\n" + "".join(f"{i},{p.name}\n" for i, p in enumerate(paths, 1)))
        (folder / "p.yaml").write_text(
            f"name: images\nbackend: {{type: local, concurrency: {args.concurrency}}}\n"
            "source: {type: csv, path: images.csv, id_column: id}\n"
            f"steps: [{{type: describe_image, image: '{{image}}', detail: {args.detail}, output: d}}]\n"
            "sinks: [{type: jsonl, path: out/records.jsonl}]\n", encoding="utf-8")
        oaipipe = shutil.which("oaipipe", path=str(Path(sys.executable).parent)) or "oaipipe"
        start = time.perf_counter()
        with (folder / "stdout").open("w+") as out, (folder / "stderr").open("w+") as err:
            proc = subprocess.Popen([oaipipe, "run", str(folder / "p.yaml"), "-q", "--no-cache", "--json"],
                                    stdout=out, stderr=err, cwd=folder)
            _, status, usage = os.wait4(proc.pid, 0)  # the rusage of this child alone
            proc.returncode = os.waitstatus_to_exitcode(status)
            wall = time.perf_counter() - start
            out.seek(0)
            err.seek(0)
            text, errors = out.read(), err.read()
        peak_mb = usage.ru_maxrss / 1024
        summary = json.loads(text) if text.strip().startswith("{") else {"error": errors[-500:]}
        records = summary.get("records", {})
        print(json.dumps({"images": args.count, "size": f"{args.size}x{args.size}", "concurrency": args.concurrency,
                          "detail": args.detail, "done": records.get("done"), "failed": records.get("failed"),
                          "peak_rss_mb": round(peak_mb), "wall_s": round(wall, 1)}))


if __name__ == "__main__":
    main()

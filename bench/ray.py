"""A sentiment-only run (vader): 1 process (in the driver) vs Ray with 2 actors on this machine.

The same benchmark as bench/workers.py (same pipeline and table), with ``run.executor: ray``; Ray's own
start-up (a local Ray instance, seconds on a loaded machine) is included in the time, as a user pays it.

    python bench/ray.py [--rows 1000000]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import workers  # noqa: E402

if __name__ == "__main__":
    if "--workers" not in sys.argv:
        sys.argv += ["--workers", "1", "2:ray"]
    workers.main()

"""A compact set of record ids, for sources that report duplicate ids on inputs of millions of rows.

Recent ids are kept exactly, with where they were seen; older ones are folded into a sorted numpy array
of 8-byte hashes (8 bytes per id instead of ~110 for a Python dict entry), so a 1M-row input costs
about 8 MB. Two different ids sharing a 64-bit hash is astronomically unlikely (about 1 in 10^7 for
a billion pairs); it would be reported as a duplicate.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = ["SeenIds"]


def _hash(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little", signed=True)


class SeenIds:
    """``check_add(id, where)``: ``None`` for a new id (now remembered), else where it was seen before
    (``"earlier"`` when only its hash is left)."""

    def __init__(self, recent: int = 65_536) -> None:
        self._recent: dict[str, object] = {}
        self._limit = recent
        #: the folded hashes, sorted (a numpy array); None until the first fold, so that an input of fewer
        #: than ``recent`` ids never imports numpy
        self._old: np.ndarray[Any, Any] | None = None

    def __len__(self) -> int:
        return len(self._recent) + (0 if self._old is None else len(self._old))

    def check_add(self, value: str, where: object) -> object | None:
        if value in self._recent:
            return self._recent[value]
        if self._old is not None and len(self._old):
            import numpy as np

            h = _hash(value)
            i = int(np.searchsorted(self._old, h))
            if i < len(self._old) and int(self._old[i]) == h:
                return "earlier"
        self._recent[value] = where
        if len(self._recent) >= self._limit:
            self._fold()
        return None

    def _fold(self) -> None:
        import numpy as np

        hashes = np.fromiter((_hash(k) for k in self._recent), dtype=np.int64, count=len(self._recent))
        hashes.sort()
        # one new array per fold (np.union1d would allocate several full-size temporaries)
        old = np.empty(0, dtype=np.int64) if self._old is None else self._old
        self._old = np.insert(old, np.searchsorted(old, hashes), hashes)
        self._recent.clear()

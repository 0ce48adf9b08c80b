"""The compact id set used by sources to report duplicate ids."""

from __future__ import annotations

from oaipipe.idset import SeenIds


def test_recent_duplicates_report_where_they_were_first_seen() -> None:
    seen = SeenIds(recent=100)
    assert seen.check_add("a", 1) is None
    assert seen.check_add("b", 2) is None
    assert seen.check_add("a", 3) == 1


def test_folded_ids_are_still_found_and_new_ids_are_not() -> None:
    seen = SeenIds(recent=10)
    for i in range(1000):
        assert seen.check_add(f"id-{i}", i) is None
    assert len(seen) == 1000
    assert seen.check_add("id-3", 5000) == "earlier"  # folded into the hash array
    assert seen.check_add("id-999", 5001) == 999 or seen.check_add("id-999", 5001) == "earlier"
    assert seen.check_add("id-1000", 5002) is None
    assert seen.check_add("id-1000", 5003) == 5002


def test_memory_is_eight_bytes_an_id_once_folded() -> None:
    seen = SeenIds(recent=1000)
    for i in range(50_000):
        seen.check_add(str(i), i)
    assert seen._old.nbytes <= 8 * 50_000
    assert len(seen._recent) < 1000

"""The cache folder's sizes and ages."""

from __future__ import annotations

import time

from vedit.cache.files import describe_age, gb_to_bytes


def test_gb_are_binary_like_the_mb_that_cache_list_prints():
    assert gb_to_bytes(20) == 20 * 2**30 and gb_to_bytes(0.5) == 2**29 and gb_to_bytes(0) == 0


def test_describe_age():
    assert describe_age(time.time()) == "just now"
    assert describe_age(time.time() + 3600) == "just now"  # a clock ahead of ours
    assert describe_age(time.time() - 125) == "2m ago"
    assert describe_age(time.time() - 3 * 86400 - 5) == "3d ago"

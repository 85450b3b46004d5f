"""What every ``vedit bench`` test gets: results files written to its own temporary folder."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _results_here(tmp_path, monkeypatch):
    """Default results files go to a temporary folder, never into the checkout."""
    monkeypatch.setenv("VEDIT_BENCH_RESULTS", str(tmp_path / "results"))

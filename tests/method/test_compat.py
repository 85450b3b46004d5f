"""The old vedit.inversion path gives every public name it held, with a deprecation warning."""

from __future__ import annotations

import pytest


def test_the_old_module_path_still_gives_every_public_name(monkeypatch):
    """``vedit.inversion`` was split in four; code that imports it keeps working, with a warning naming the parts."""
    import sys

    from vedit.cache import files, inversions
    from vedit.method import ddim, trajectory

    monkeypatch.delitem(sys.modules, "vedit.inversion", raising=False)
    with pytest.warns(DeprecationWarning, match=r"^vedit\.inversion has moved: import vedit\.method\.ddim or "):
        import vedit.inversion as old
    homes = {
        ddim: "inversion_timesteps sampling_timesteps check_schedules invert reconstruct",
        trajectory: "FORMAT LOAD_FIELDS RUN_FIELDS DamagedTrajectory MappedLatents Trajectory TrajectoryWriter "
        "read_metadata is_trajectory",
        inversions: "cache_key InversionCache",
        files: "GB MB gb_to_bytes partial_prefix sweep_partials cache_root CacheEntry scan_folder describe_age",
    }
    for module, names in homes.items():
        for name in names.split():
            assert getattr(old, name) is getattr(module, name), name

"""Profiles (vedit.runtime.profiling): stages nest and add up."""

from __future__ import annotations

import time

from vedit.runtime.profiling import Profile, profiling, stage


def test_profile_stages_nest_add_up_and_are_no_ops_without_a_profile():
    with stage("anything"):  # nothing active: no error, nothing kept
        pass
    timer = Profile("cpu")
    with profiling(timer):
        with stage("outer"):
            time.sleep(0.02)
            with stage("inner"):
                time.sleep(0.01)
        with stage("inner"):
            pass
    seconds = timer.as_dict()
    assert seconds["outer"] >= 0.03 and 0.01 <= seconds["inner"] < seconds["outer"]
    assert timer.calls["inner"] == 2

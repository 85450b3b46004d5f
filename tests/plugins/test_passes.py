"""The pass registry (vedit.plugins.passes): the one list of passes, each registered by the plugin that needs it,
what a spec says of its pass, and a plugin's pass as the engines' shape helpers see it."""

from __future__ import annotations

import pytest
import torch

from helpers.passes import GAIN, GainPass, register_gain_pass
from vedit import PassSpec, plugins
from vedit.errors import PluginError
from vedit.method.passes import PLAIN
from vedit.plugins.hookspecs import hookimpl
from vedit.plugins.passes import pass_kinds, pass_spec, registered_passes
from vedit_engines._tensorrt_common import profile_shapes


def test_the_host_registers_plain_and_frames_and_tokenflow_its_own_three():
    found = plugins.registered("pass")
    assert {name: entry.plugin for name, entry in found.items()} == {
        "plain": "passes", "frames": "passes",
        "keyframe": "tokenflow", "keyframe_bounded": "tokenflow", "propagation": "tokenflow",
    }  # fmt: skip
    assert all(entry.package == "vedit" for entry in found.values())
    assert pass_kinds() == ("plain", "frames", "keyframe", "propagation")  # the bounded pass counts as keyframe
    specs = registered_passes()
    assert [n for n, s in specs.items() if s.rows_per_frame == 1] == ["plain"]
    assert [n for n, s in specs.items() if s.returns_records] == ["keyframe", "keyframe_bounded"]
    assert [n for n, s in specs.items() if s.searches_nearest] == ["propagation"]
    assert specs["propagation"].batched_inputs == {"latents": "rows", "text": "rows", "weights": "frames"}
    assert specs["keyframe_bounded"].batched_inputs["partners"] == "frames"


def test_a_pass_registered_late_appears_and_an_unknown_one_is_one_line():
    with pytest.raises(PluginError, match=r"^unknown pass 'gain'; available: frames, keyframe, "):
        pass_spec("gain")
    register_gain_pass()
    assert pass_spec("gain") is GAIN and plugins.registered("pass")["gain"].plugin == "test-gain-pass"
    assert pass_kinds()[-1] == "gain"


def test_what_a_spec_must_say_is_checked_and_a_plugin_with_a_bad_one_is_reported_by_name():
    with pytest.raises(ValueError, match="rows_per_frame must be 1 or more"):
        PassSpec(name="odd", build=GainPass, example=lambda request: (), rows_per_frame=0)
    with pytest.raises(ValueError, match=r"batched_inputs \{'gains': 'chunks'\} must be 'rows' or 'frames'"):
        PassSpec(name="odd", build=GainPass, example=lambda request: (), batched_inputs={"gains": "chunks"})
    assert PassSpec(name="odd", build=GainPass, example=lambda request: ()).kind == "odd"

    class Broken:
        @hookimpl
        def register_passes(self, register):
            register(PassSpec(name="broken", build=GainPass, example=None))

    plugins.get_plugin_manager().register(Broken(), name="broken-pass")
    assert "broken" not in registered_passes() and "plain" in registered_passes()
    (failure,) = [f for f in plugins.failures() if f.plugin == "broken-pass"]
    assert failure.error == "register_passes raised: pass 'broken': build and example must be callables"


def test_two_plugins_registering_one_pass_name_is_an_error_naming_both():
    class Twin:
        @hookimpl
        def register_passes(self, register):
            register(PLAIN)

    plugins.get_plugin_manager().register(Twin(), name="twin")
    with pytest.raises(PluginError, match="pass 'plain' is registered twice: by plugin 'passes'.*by plugin 'twin'"):
        registered_passes()


def test_the_engines_shape_a_plugins_pass_by_its_spec():
    """What the engines once knew of the built-in passes by name they now read from the spec: here a pass
    with an input of one row per frame, ``gains``."""
    register_gain_pass()
    names = GainPass.input_names
    example = (torch.zeros(12, 4, 8, 8), torch.tensor(501), torch.zeros(12, 77, 32), torch.ones(2, dtype=bool))
    example += (torch.ones(4),)
    profile = profile_shapes("gain", names, example, (6, 12))
    assert profile["gains"] == ((2,), (4,), (4,)) and profile["latents"][0] == (6, 4, 8, 8)
    assert profile["flags"] == ((2,), (2,), (2,))
    shapes = GAIN.dynamic_shapes(GainPass.__new__(GainPass), 2, 4)  # only its input names and forward are read
    assert list(shapes) == ["latents", "t", "text", "flags", "gains"]
    frames = shapes["gains"][0]
    assert (frames.min, frames.max) == (2, 4) and shapes["latents"][0].root is frames
    assert shapes["t"] is None and shapes["flags"] is None

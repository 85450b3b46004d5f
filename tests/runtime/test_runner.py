"""The pass runner (vedit.runtime.runner): every pass through every engine that runs here equals eager,
a plugin's own pass built and run by name, the engine chain, passes that must run eagerly, the forwards
as a result reads them, and the old ``vedit.engine`` path."""

from __future__ import annotations

import pytest
import torch

from helpers.engines import (  # noqa: F401  (fixtures, used by name)
    ENGINES,
    B,
    H,
    W,
    eager_outputs,
    engine_cache,
    passes_with,
    relative_error,
    run_all,
    sd,  # noqa: F401  (fixtures, used by name)
)
from helpers.passes import register_gain_pass
from vedit import plugins
from vedit.errors import PluginError
from vedit.method.denoise import Denoiser, EditPlan, Step
from vedit.method.unet import COND, SOURCE, UNCOND
from vedit.runtime.engine_cache import EngineCache
from vedit.runtime.runner import Forwards, Passes, engine_chain
from vedit_plugins.editors.pnp import CONV_LAYERS, QK_LAYERS


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_every_pass_through_the_engine_equals_eager(sd, eager_outputs, engine_cache, engine):
    inputs, expected = eager_outputs
    cache = EngineCache(engine_cache)
    with Passes(
        sd, [plugins.get("engine", engine)], strict=True, conv_layers=CONV_LAYERS, qk_layers=QK_LAYERS, cache=cache
    ) as passes:
        got = run_all(passes, inputs)
        # Called again (the first call's result comes from the build): the built callable itself.
        again = run_all(passes, inputs)
    assert set(passes.used.values()) == {engine}
    for name in expected:
        assert len(got[name]) == len(expected[name]) == (33 if name.startswith("keyframe") else 1)
        for a, b, e in zip(got[name], again[name], expected[name]):
            assert relative_error(a, e) < 1e-4, name
            assert relative_error(b, e) < 1e-4, name
    # the propagation pass really reads its record inputs (an export that baked them in would not)
    args = inputs["propagation"]
    zeroed = passes_with(sd, engine, cache, lambda p: p.propagate(*args[:5], [r * 0 for r in args[5:]]))
    assert relative_error(zeroed, expected["propagation"][0]) > 1e-2


def test_a_plugins_own_pass_is_built_by_the_engines_and_run_by_name_as_eager_runs_it(sd, engine_cache):
    register_gain_pass()
    gen = torch.Generator().manual_seed(3)
    embeds = dict(zip((SOURCE, UNCOND, COND), sd.encode_prompt(["a cat", "", "a dog"]).split(1)))
    source, latents = torch.randn(2, 4, H, W, generator=gen), torch.randn(2, 4, H, W, generator=gen)
    plan = EditPlan(timesteps=torch.tensor([601]), start_latents=latents, source=lambda t, frames: source)
    step, gains = Step(index=0, t=torch.tensor(601), count=1), torch.tensor([0.7, 1.3])
    got = {}
    for engine in ("eager", "torchscript"):
        with Passes(sd, [plugins.get("engine", engine)], strict=True, cache=EngineCache(engine_cache)) as passes:
            example = passes.example("gain", 2, (H, W), generator=torch.Generator().manual_seed(1))
            eps = passes.run("gain", example)
            silent = passes.run("gain", (*example[:4], example[4] * 0))
            guided, records = Denoiser(passes, plan, embeds, 7.5, with_source=True).run(
                "gain", torch.arange(2), latents, step, gains
            )
        assert passes.used == {"gain": engine} and passes.forwards == {"gain": 3 * 2 * 3}
        got[engine] = eps, silent, guided
        assert [tuple(x.shape) for x in example] == [(6, 4, H, W), (), (6, 77, 32), (2,), (2,)] and records == []
    for a, b in zip(got["torchscript"], got["eager"]):
        assert relative_error(a, b) < 1e-4
    assert relative_error(got["torchscript"][1], got["eager"][0]) > 1e-2  # the gains are read, not baked in
    # the Denoiser's call is the pass on [source, latents, latents] with the plan's timestep and flags, guided
    with Passes(sd, [plugins.get("engine", "eager")]) as passes:
        text = torch.cat([embeds[b].expand(2, -1, -1) for b in (SOURCE, UNCOND, COND)])
        flags = torch.tensor([False, False])  # the plan's injection: none
        eps = passes.run("gain", (torch.cat([source, latents, latents]), torch.tensor(601), text, flags, gains))
    assert torch.allclose(got["eager"][2], eps[2:4] + 7.5 * (eps[4:] - eps[2:4]), atol=1e-5)


def test_a_result_reads_the_forwards_by_their_earlier_names_too():
    forwards = Forwards({"inversion": 8, "keyframe": 12, "propagation": 24})
    assert forwards["keyframes"] == 12 and forwards.get("keyframes") == 12 and "keyframes" in forwards
    assert sum(forwards.values()) == 44 and forwards == {"inversion": 8, "keyframe": 12, "propagation": 24}
    assert forwards.by_name() == {"inversion": 8, "keyframe": 12, "propagation": 24, "keyframes": 12}
    per_frame = Forwards({"inversion": 8, "plain": 16})  # per-frame calls without a source branch
    assert per_frame["frames"] == 16 and Forwards({"frames": 24, "plain": 2})["frames"] == 24
    assert "frames" not in forwards and forwards.get("frames") is None
    with pytest.raises(KeyError):
        forwards["frames"]


def test_engine_lists_auto_and_engines_that_cannot_run_here():
    cpu = torch.device("cpu")
    chain, strict, notes = engine_chain("auto", cpu)
    assert [e.name for e in chain] == ["eager"] and not strict and notes == []
    chain, strict, notes = engine_chain("tensorrt,torchscript", cpu)
    assert [e.name for e in chain] == ["torchscript", "eager"] and not strict
    assert len(notes) == 1 and notes[0].startswith("engine 'tensorrt' cannot run here (")
    # on CUDA, auto tries TensorRT, then torch.compile, then eager (those that can run there)
    chain, _, notes = engine_chain("auto", torch.device("cuda"))
    assert [e.name for e in chain][-2:] == ["compile", "eager"]
    with pytest.raises(PluginError, match="cannot run here"):
        engine_chain("tensorrt", cpu)
    with pytest.raises(PluginError, match="unknown engine 'warp'"):
        engine_chain("warp,eager", cpu)


def test_a_plugins_own_attention_handler_and_a_python_nn_backend_run_eagerly_said_once(sd, eager_outputs, tmp_path):
    from vedit.method.attention import PlainAttention
    from vedit.method.unet import CallContext

    inputs, expected = eager_outputs
    notes: list[str] = []
    faiss = pytest.importorskip("faiss") and plugins.get("nn_backend", "faiss")
    with Passes(
        sd,
        [plugins.get("engine", "torchscript"), plugins.get("engine", "eager")],
        conv_layers=CONV_LAYERS,
        qk_layers=QK_LAYERS,
        cache=EngineCache(tmp_path),
        warn=notes.append,
        nearest=faiss,
    ) as passes:
        args = inputs["propagation"]
        for _ in range(2):
            eps = passes.propagate(*args[:5], args[5:])
        assert relative_error(eps, expected["propagation"][0]) < 1e-4
        assert passes.used["propagation"] == "eager"
        latents, t, text, _ = inputs["frames"]
        for _ in range(2):
            passes.custom(latents, t, text, CallContext((SOURCE, UNCOND, COND), B, PlainAttention()), kind="frames")
    assert notes == [
        "nn backend 'faiss' runs in Python, so the propagation pass runs eagerly (the torch backend compiles with it)",
        "attention handler PlainAttention is Python code, so its UNet calls run eagerly",
    ]


def test_the_old_path_vedit_engine_gives_the_runner_and_the_cache_with_a_warning_naming_both(monkeypatch):
    """Plugins written before the layout import ``vedit.engine``; its names now live in two modules."""
    import importlib
    import sys

    from vedit.runtime import engine_cache, runner

    monkeypatch.delitem(sys.modules, "vedit.engine", raising=False)
    with pytest.warns(DeprecationWarning, match="vedit.runtime.runner or vedit.runtime.engine_cache"):
        old = importlib.import_module("vedit.engine")
    assert (old.Passes, old.BuildTarget, old.EngineError, old.engine_chain) == (
        runner.Passes,
        runner.BuildTarget,
        runner.EngineError,
        runner.engine_chain,
    )
    assert (old.EngineCache, old.torch_key_parts, old.batches_text) == (
        engine_cache.EngineCache,
        engine_cache.torch_key_parts,
        engine_cache.batches_text,
    )

"""Engines: every pass through every engine that runs here equals eager, whole runs give eager's
frames, one compiled graph per pass and shape, the engine cache, and falling back."""

from __future__ import annotations

import json
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import flip_byte, make_clip
from vedit import plugins
from vedit.engine import EngineCache, EngineError, Passes, engine_chain
from vedit.errors import PluginError
from vedit.hookspecs import hookimpl
from vedit.models import load_model
from vedit.passes import joint_partners, select_keyframes
from vedit.pipeline import edit
from vedit.unet import COND, SOURCE, UNCOND
from vedit_plugins.pnp import CONV_LAYERS, QK_LAYERS
from vedit_plugins.tokenflow import blend_weights

# The shapes of the whole runs below (8 frames of 64x48, B = 4, batch 8), so that the per-pass
# builds and the runs share entries (and inductor's own cache, for compile).
H, W, K, B = 6, 8, 2, 4
ENGINES = ["torchscript", "onnxruntime", "compile"]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def sd():
    return load_model("tiny", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engines")


def pass_inputs(sd, passes: Passes) -> dict[str, tuple[torch.Tensor, ...]]:
    """Inputs of every pass, with real records from an eager keyframe pass."""
    gen = torch.Generator().manual_seed(4)
    embeds = dict(zip((SOURCE, UNCOND, COND), sd.encode_prompt(["a cat", "", "a dog"]).split(1)))
    text = lambda n: torch.cat([embeds[b].expand(n, -1, -1) for b in (SOURCE, UNCOND, COND)])  # noqa: E731
    t, flags = torch.tensor(601), torch.tensor([True, True])
    keyframe = (torch.randn(3 * K, 4, H, W, generator=gen), t, text(K), flags)
    _, records = passes.keyframe(*keyframe)
    chosen = select_keyframes(records, torch.tensor([1, 0]))
    weights = blend_weights(range(4, 8), 1, B)
    return {
        "plain": (torch.randn(8, 4, H, W, generator=gen), t, embeds[SOURCE].expand(8, -1, -1).contiguous()),
        "frames": (torch.randn(3 * B, 4, H, W, generator=gen), t, text(B), torch.tensor([True, False])),
        "keyframe": keyframe,
        # three keyframes, each attending to two of them (--max-joint-keyframes 2)
        "keyframe_bounded": (torch.randn(9, 4, H, W, generator=gen), t, text(3), flags, joint_partners(3, 2, gen)),
        "propagation": (torch.randn(3 * B, 4, H, W, generator=gen), t, text(B), flags, weights, *chosen),
    }


def run_all(passes: Passes, inputs) -> dict[str, list[torch.Tensor]]:
    out = {}
    for name, args in inputs.items():
        result = {"plain": passes.plain, "frames": passes.frames, "propagation": lambda *a: passes.propagate(*a[:5], a[5:])}.get(name)
        if name in ("keyframe", "keyframe_bounded"):
            eps, records = passes.keyframe(*args)
            out[name] = [eps, *records]
        else:
            out[name] = [result(*args)]
    return out


@pytest.fixture(scope="module")
def eager_outputs(sd):
    with Passes(sd, [plugins.get("engine", "eager")], conv_layers=CONV_LAYERS, qk_layers=QK_LAYERS) as passes:
        inputs = pass_inputs(sd, passes)
        return inputs, run_all(passes, inputs)


@pytest.mark.parametrize("engine", ENGINES)
def test_every_pass_through_the_engine_equals_eager(sd, eager_outputs, engine_cache, engine):
    inputs, expected = eager_outputs
    cache = EngineCache(engine_cache)
    with Passes(sd, [plugins.get("engine", engine)], strict=True, conv_layers=CONV_LAYERS, qk_layers=QK_LAYERS,
                cache=cache) as passes:  # fmt: skip
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


def passes_with(sd, engine, cache, fn):
    with Passes(sd, [plugins.get("engine", engine)], strict=True, conv_layers=CONV_LAYERS, qk_layers=QK_LAYERS,
                cache=cache) as passes:  # fmt: skip
        return fn(passes)


def frames_of(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]).astype(np.int16)


@pytest.fixture(scope="module")
def run_clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=8, size=(64, 48))


RUN = dict(prompt="a watercolor", source_prompt="a test pattern", model="tiny", steps=2, inversion_steps=2,
           chunk_size=B, batch_size=8, size="64x48", output_size="working", seed=0, device="cpu", dtype="fp32")  # fmt: skip


@pytest.fixture(scope="module")
def eager_run(run_clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("eager") / "frames"
    result = edit(run_clip, out, engine="eager", no_cache=True, **RUN)
    return frames_of(out), result


@pytest.mark.parametrize("engine", ENGINES)
def test_a_whole_run_through_the_engine_gives_eagers_frames(run_clip, eager_run, engine_cache, tmp_path, engine):
    from torch._dynamo.utils import counters

    expected, eager_result = eager_run
    if engine == "compile":
        torch._dynamo.reset()  # count from nothing (inductor's on-disk cache still spares the codegen)
    graphs = counters["stats"]["unique_graphs"]
    out = tmp_path / "frames"
    result = edit(run_clip, out, engine=engine, engine_cache=str(engine_cache), no_cache=True, **RUN)
    got = frames_of(out)
    assert got.shape == expected.shape == (8, 48, 64, 3)
    assert np.abs(got - expected).max() <= 1
    assert result.engines == {"plain": engine, "keyframe": engine, "propagation": engine}
    assert result.forwards == eager_result.forwards
    if engine == "compile":
        # 2 inversion steps, 2 denoising steps of 2 chunks: 3 graphs (plain 8, keyframe 6, propagation
        # 12), not one per step or chunk, although t, flags, keyframes and weights change between calls.
        assert counters["stats"]["unique_graphs"] - graphs == 3


def test_engine_cache_rebuilds_stale_and_corrupt_entries(sd, eager_outputs, tmp_path):
    inputs, expected = eager_outputs
    said: list[str] = []
    cache = EngineCache(tmp_path / "engines", message=said.append)

    def notes() -> list[str]:  # why an entry was rebuilt
        return [line for line in said if line.startswith("engine cache:")]

    run = lambda: passes_with(sd, "torchscript", cache, lambda p: p.plain(*inputs["plain"]))  # noqa: E731
    assert relative_error(run(), expected["plain"][0]) < 1e-4
    (entry,) = cache.entries()
    assert entry.pass_name == "plain" and entry.engine == "torchscript" and entry.parts["model"] == sd.fingerprint
    assert notes() == []
    assert said[0] == "building the torchscript plain pass (batch 8); the engine cache keeps it for later runs"
    assert said[1].startswith("built the torchscript plain pass in ") and len(said) == 2
    assert relative_error(run(), expected["plain"][0]) < 1e-4  # loaded, not rebuilt
    assert len(said) == 2  # and nothing said

    meta_path = entry.path / "entry.json"
    meta = json.loads(meta_path.read_text())
    meta["parts"]["torch"] = "1.0.0"  # built by another torch: stale
    meta_path.write_text(json.dumps(meta))
    assert relative_error(run(), expected["plain"][0]) < 1e-4
    assert len(notes()) == 1 and "stale" in notes()[0] and "torch 1.0.0" in notes()[0] and "rebuilding" in notes()[0]

    artefact = entry.path / "pass.pt"
    artefact.write_bytes(artefact.read_bytes()[:1000])  # truncated: corrupt
    assert relative_error(run(), expected["plain"][0]) < 1e-4
    assert len(notes()) == 2 and "corrupt" in notes()[1]
    assert len(cache.entries()) == 1 and cache.entries()[0].bytes > 100_000

    data = bytearray(artefact.read_bytes())  # same size, one byte flipped, mtime changed: hashed, corrupt
    data[len(data) // 2] ^= 0xFF
    artefact.write_bytes(bytes(data))
    assert relative_error(run(), expected["plain"][0]) < 1e-4
    assert len(notes()) == 3 and "does not match its recorded hash" in notes()[2]

    flip_byte(artefact, artefact.stat().st_size // 3)  # and with the modification time kept as it was
    assert relative_error(run(), expected["plain"][0]) < 1e-4
    assert len(notes()) == 4 and notes()[3] == (
        f"engine cache: torchscript plain pass in {entry.path} is corrupt (pass.pt does not match its recorded hash); "
        "rebuilding"
    )


def test_an_engine_cache_entry_from_before_checksums_is_checked_with_its_sha256(tmp_path):
    said: list[str] = []
    cache = EngineCache(tmp_path, message=said.append)
    parts, identity = {"engine": "fake", "pass": "plain", "model": "m"}, ("engine", "pass", "model")
    content, builds = bytes(range(256)) * 64, []

    def notes() -> list[str]:  # why an entry was rebuilt, not the build progress lines
        return [line for line in said if line.startswith("engine cache:")]

    def build(folder):
        builds.append(folder)
        (folder / "artefact.bin").write_bytes(content)

    def load():
        return cache.load_or_build(parts, identity, build, lambda f: (f / "artefact.bin").read_bytes(), label="fake")

    assert load() == content
    folder = cache.folder(parts, identity)
    meta = json.loads((folder / "entry.json").read_text())
    meta["files"]["artefact.bin"].pop("crc32", None)  # as entries were written before they recorded a checksum
    (folder / "entry.json").write_text(json.dumps(meta))
    assert load() == content and len(builds) == 1 and notes() == []  # still loads
    flip_byte(folder / "artefact.bin", 5000)
    assert load() == content and len(builds) == 2
    assert notes() == [f"engine cache: fake in {folder} is corrupt (artefact.bin does not match its recorded hash); rebuilding"]
    meta = json.loads((folder / "entry.json").read_text())
    rebuilt = meta["files"]["artefact.bin"]
    assert rebuilt["crc32"] == f"crc32:{zlib.crc32(content):08x}" and len(rebuilt["sha256"]) == 64
    del rebuilt["crc32"], rebuilt["sha256"]  # an entry.json that records no hash at all cannot be checked: rebuilt
    (folder / "entry.json").write_text(json.dumps(meta))
    assert load() == content and len(builds) == 3 and "does not match its recorded hash" in notes()[-1]


def test_two_builders_of_one_entry_both_succeed(tmp_path):
    cache = EngineCache(tmp_path)
    parts = {"engine": "fake", "pass": "plain", "model": "m"}
    both_building = threading.Barrier(2)
    results, errors = [], []

    def build(folder):
        (folder / "artefact.bin").write_bytes(b"x" * 1000)
        both_building.wait(timeout=10)  # both have built before either installs

    def worker():
        try:
            results.append(cache.load_or_build(parts, ("engine", "pass", "model"), build,
                                               lambda f: (f / "artefact.bin").read_bytes(), label="fake"))
        except Exception as error:  # pragma: no cover - the failure this test looks for
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [b"x" * 1000] * 2
    assert [p.name for p in tmp_path.iterdir()] == [cache.folder(parts, ("engine", "pass", "model")).name]


class Broken:
    name = "broken"
    description = "an engine whose build always fails"

    def build(self, module, example, target):
        raise RuntimeError("unsupported operator aten::frobnicate\nmore detail that must not be printed")


class BrokenPlugin:
    @hookimpl
    def register_engines(self, register):
        register(Broken())


@pytest.fixture
def broken_engine():
    plugins.get_plugin_manager().register(BrokenPlugin(), name="broken-engine")
    yield
    plugins.reset()


def test_a_failing_engine_falls_back_in_one_line_unless_named_alone(run_clip, eager_run, broken_engine, tmp_path):
    expected, _ = eager_run
    result = edit(run_clip, tmp_path / "frames", engine="broken,eager", no_cache=True, **RUN)
    assert np.array_equal(frames_of(tmp_path / "frames"), expected)
    assert result.engines == {"plain": "eager", "keyframe": "eager", "propagation": "eager"}
    fallbacks = [w for w in result.warnings if "broken" in w]
    # one line per pass it could not run, naming the engine, the pass and the first line of the reason
    assert sorted(fallbacks) == sorted(
        f"engine 'broken' cannot run the {name} pass (RuntimeError: unsupported operator aten::frobnicate); trying the next"
        for name in ("plain", "keyframe", "propagation")
    )
    with pytest.raises(EngineError) as error:
        edit(run_clip, tmp_path / "alone", engine="broken", no_cache=True, **RUN)
    assert error.value.exit_code == 5
    assert str(error.value) == "engine 'broken' cannot run the plain pass: RuntimeError: unsupported operator aten::frobnicate"
    assert not (tmp_path / "alone").exists()


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
    from vedit.attention import PlainAttention
    from vedit.unet import CallContext

    inputs, expected = eager_outputs
    notes: list[str] = []
    faiss = pytest.importorskip("faiss") and plugins.get("nn_backend", "faiss")
    with Passes(sd, [plugins.get("engine", "torchscript"), plugins.get("engine", "eager")], conv_layers=CONV_LAYERS,
                qk_layers=QK_LAYERS, cache=EngineCache(tmp_path), warn=notes.append, nearest=faiss) as passes:  # fmt: skip
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


def test_engines_build_list_and_clear_from_the_cli(tmp_path):
    from typer.testing import CliRunner

    from vedit.cli import create_app

    app, runner = create_app(), CliRunner()
    cache = tmp_path / "engines"
    build = ["engines", "build", "--engine", "torchscript", "--model", "tiny", "--size", "64x48", "--frames", "4",
             "--chunk-size", "4", "--batch-size", "4", "--device", "cpu", "--engine-cache", str(cache)]  # fmt: skip
    first = runner.invoke(app, build)
    assert first.exit_code == 0, first.output
    # N = 4, B = 4: the inversion batch of 4, one keyframe (3K = 3), one chunk (3B = 12)
    rows = [line.split() for line in first.stdout.splitlines() if "torchscript" in line]
    assert [(r[1], r[3]) for r in rows] == [("plain", "4"), ("keyframe", "3"), ("propagation", "12")]
    listed = runner.invoke(app, ["engines", "list", "--engine-cache", str(cache)])
    assert listed.exit_code == 0 and listed.stdout.count("torchscript") == 3

    keyframe = next(e for e in EngineCache(cache).entries() if e.pass_name == "keyframe")
    (keyframe.path / "pass.pt").write_bytes(b"not a module")  # corrupt
    again = runner.invoke(app, [*build, "--seed", "3"])  # the seed draws nothing here: the same model's engines
    assert again.exit_code == 0, again.output
    notes = [line for line in again.stderr.splitlines() if line.startswith("vedit: engine cache:")]
    assert len(notes) == 1 and "keyframe pass" in notes[0] and "is corrupt" in notes[0] and "rebuilding" in notes[0]
    assert "vedit: warning: --seed is ignored: building engines draws nothing at random" in again.stderr
    assert len(EngineCache(cache).entries()) == 3
    assert [line for line in again.stderr.splitlines() if line.startswith("vedit: building")] == [
        "vedit: building the torchscript keyframe pass (batch 3); the engine cache keeps it for later runs"
    ]  # the other passes come from the cache, silently

    cleared = runner.invoke(app, ["engines", "clear", "--engine-cache", str(cache)])
    assert cleared.exit_code == 0 and "removed" in cleared.stdout
    assert EngineCache(cache).entries() == []
    empty = runner.invoke(app, ["engines", "list", "--engine-cache", str(cache)])
    assert "no built engines" in empty.stdout


def test_per_frame_editing_with_injection_runs_the_frames_pass_through_the_engine(run_clip, engine_cache, tmp_path):
    options = {**RUN, "propagator": "none"}
    eager = edit(run_clip, tmp_path / "eager", engine="eager", no_cache=True, **options)
    traced = edit(run_clip, tmp_path / "traced", engine="torchscript", engine_cache=str(engine_cache), no_cache=True,
                  **options)  # fmt: skip
    assert eager.engines == {"plain": "eager", "frames": "eager"}
    assert traced.engines == {"plain": "torchscript", "frames": "torchscript"}
    assert traced.forwards == eager.forwards == {"inversion": 8 * 2, "frames": 3 * 8 * 2}
    assert np.abs(frames_of(tmp_path / "traced") - frames_of(tmp_path / "eager")).max() <= 1


def test_a_run_says_when_it_builds_a_pass_and_how_long_it_took_and_nothing_when_cached(tmp_path):
    from typer.testing import CliRunner

    from vedit.cli import create_app

    clip = make_clip(tmp_path / "clip.mp4", frames=4, size=(64, 48))
    args = ["run", str(clip), "-p", "x", "--model", "tiny", "--size", "64x48", "--steps", "2", "--inversion-steps", "2",
            "--chunk-size", "4", "--no-cache", "--engine", "torchscript", "--engine-cache", str(tmp_path / "engines"),
            "-o", str(tmp_path / "out.mp4")]  # fmt: skip
    first = CliRunner().invoke(create_app(), args)
    assert first.exit_code == 0, first.output
    said = [line for line in first.stderr.splitlines() if "torchscript" in line]
    # N = 4, B = 4: the inversion batch of 4, one keyframe (3K = 3), one chunk (3B = 12), each built once
    assert [line.split(" in ")[0] if "built" in line else line for line in said] == [
        f"vedit: building the torchscript {name} pass (batch {batch}); the engine cache keeps it for later runs"
        if step == "building" else f"vedit: built the torchscript {name} pass"
        for name, batch in (("plain", 4), ("keyframe", 3), ("propagation", 12)) for step in ("building", "built")
    ]  # fmt: skip
    assert all(line.endswith(" s") and float(line.split(" in ")[1][:-2]) > 0 for line in said[1::2])
    again = CliRunner().invoke(create_app(), args)
    assert again.exit_code == 0, again.output
    assert [line for line in again.stderr.splitlines() if "torchscript" in line] == []  # loaded from the cache


def test_compile_says_when_it_compiles_a_pass_and_how_long_it_took(monkeypatch, tmp_path):
    from vedit.engine import BuildTarget
    from vedit_plugins.compile_engine import Compile

    monkeypatch.setattr(torch, "compile", lambda module, **options: module)  # the messages, not inductor
    said: list[str] = []
    cpu = torch.device("cpu")
    target = BuildTarget("keyframe", (6,), cpu, torch.float32, "tiny", EngineCache(tmp_path), said.append)
    run = Compile().build(torch.nn.Identity(), (torch.ones(6),), target)
    assert said == ["compiling the keyframe pass (batch 6) with torch.compile; once per process"]
    assert torch.equal(run(torch.ones(6)), torch.ones(6)) and torch.equal(run(torch.zeros(6)), torch.zeros(6))
    assert len(said) == 2 and said[1].startswith("compiled the keyframe pass (batch 6) with torch.compile in ")

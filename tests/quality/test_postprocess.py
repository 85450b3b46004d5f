"""Post-processing: the streaming protocol and its chain, the ``--postprocess`` spec, and the two
deflicker filters measured by warp error on a clip with known motion."""

from __future__ import annotations

import os

import numpy as np
import pytest
from typer.testing import CliRunner

import vedit
from conftest import make_clip
from vedit import plugins
from vedit.errors import ConfigError, PluginError
from vedit.io.reader import FrameReader
from vedit.plugins.hookspecs import hookimpl
from vedit.quality.flow import FLOW_BATCH, flow_backend
from vedit.quality.metrics import psnr, warp_errors
from vedit.quality.postprocess import Context, apply, parse, resolve
from vedit_bench.consistency import translating_clip
from vedit_plugins.postprocessors.deflicker import FlowDeflicker, LumaDeflicker

FRAMES, SIZE = 12, (96, 96)


@pytest.fixture(scope="module")
def motion(tmp_path_factory):
    """A texture moving 8 px/frame, the same with brightness flicker, and with brightness and
    contrast flicker (seeded): (source, brightness, both)."""
    source = translating_clip(tmp_path_factory.mktemp("motion"), FRAMES, SIZE)
    rng = np.random.default_rng(1)
    offset = rng.uniform(-25, 25, FRAMES)[:, None, None, None]
    gain = rng.uniform(0.75, 1.25, FRAMES)[:, None, None, None]
    pixels = source.astype(np.float64)
    mean = pixels.mean(axis=(1, 2, 3), keepdims=True)
    brightness = np.clip(np.rint(pixels + offset), 0, 255).astype(np.uint8)
    both = np.clip(np.rint((pixels - mean) * gain + mean + offset), 0, 255).astype(np.uint8)
    return source, brightness, both


def context_for(source: np.ndarray, reads: list[int] | None = None) -> Context:
    """A context whose source is ``source``; ``reads`` (if given) counts the frames read from it."""

    def frames():
        for frame in source:
            if reads is not None:
                reads[0] += 1
            yield frame

    return Context(fps=24, size=(source.shape[2], source.shape[1]), frames=len(source), source=frames)


def error_of(source: np.ndarray, clip: np.ndarray) -> float:
    return warp_errors(source, [clip], backend=flow_backend("dis"))[1][0].value


def deflickered(spec: str, source: np.ndarray, clip: np.ndarray, batch_size: int = 4) -> np.ndarray:
    return apply(spec, clip, context_for(source), batch_size=batch_size)


# ----------------------------------------------------------------------------- warp error


def test_flicker_raises_the_warp_error_and_each_deflicker_lowers_it(motion):
    source, brightness, both = motion
    clean = error_of(source, source)
    flickered = {"brightness": error_of(source, brightness), "both": error_of(source, both)}
    # measured: clean 0.032, brightness flicker 31.7, brightness and contrast flicker 36.9
    assert clean < 0.1
    assert flickered["brightness"] > 20 and flickered["both"] > 25
    for kind, clip in (("brightness", brightness), ("both", both)):
        luma = error_of(source, deflickered("deflicker-luma", source, clip))
        flow = error_of(source, deflickered("deflicker-flow", source, clip))
        strong = error_of(source, deflickered("deflicker-flow:strength=0.8", source, clip))
        chained = error_of(source, deflickered("deflicker-luma,deflicker-flow", source, clip))
        ratios = {
            name: value / flickered[kind]
            for name, value in (("luma", luma), ("flow", flow), ("strong", strong), ("chained", chained))
        }
        # measured (brightness / both): luma 0.042 / 0.158, flow 0.155 / 0.160,
        # flow at 0.8 0.034 / 0.036, the two chained 0.012 / 0.033
        limits = {
            "brightness": {"luma": 0.08, "flow": 0.25, "strong": 0.07, "chained": 0.03},
            "both": {"luma": 0.25, "flow": 0.25, "strong": 0.07, "chained": 0.06},
        }[kind]
        for name, limit in limits.items():
            assert ratios[name] < limit, (kind, name, ratios)
        assert strong < flow  # a stronger blend smooths more
    # and both come closer to the clip before the flicker (measured: 25.1 dB flickered, luma 34.8,
    # flow 30.8; with contrast flicker 24.0, 29.2 and 29.0)
    before = psnr(brightness, source)
    assert psnr(deflickered("deflicker-luma", source, brightness), source) > before + 7
    assert psnr(deflickered("deflicker-flow", source, brightness), source) > before + 4


def test_deflicker_luma_leaves_a_clip_without_flicker_almost_as_it_was(motion):
    source, _, _ = motion
    still = np.repeat(source[:1], 7, axis=0)
    assert np.array_equal(deflickered("deflicker-luma", still, still), still)  # nothing to match: untouched
    out = deflickered("deflicker-luma", source, source)
    # moving content shifts each frame's mean luma a little; measured: 1.13 of 255 on average
    assert np.abs(out.astype(int) - source).mean() < 2.0
    assert error_of(source, out) < 0.5  # measured 0.19, against 31.7 for the flickered clip
    # the flow filter on a clean clip: the warped previous frame is the same picture (measured 51.6 dB)
    assert psnr(deflickered("deflicker-flow", source, source), source) > 45


def test_deflicker_flow_at_strength_zero_is_the_identity_and_reads_no_source(motion):
    source, brightness, _ = motion
    reads = [0]
    out = apply("deflicker-flow:strength=0", brightness, context_for(source, reads), batch_size=5)
    assert np.array_equal(out, brightness)
    assert reads[0] == 0


# ----------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("spec", ["deflicker-luma", "deflicker-luma:window=7", "deflicker-flow:strength=0.7"])
def test_output_does_not_depend_on_the_batch_sizes(motion, spec):
    source, _, both = motion
    outputs = [deflickered(spec, source, both, batch_size=n) for n in (1, 3, FRAMES)]
    assert outputs[0].shape == both.shape
    assert not np.array_equal(outputs[0], both)
    for out in outputs[1:]:
        assert np.array_equal(out, outputs[0])


@pytest.mark.parametrize("window", [3, 7])
def test_deflicker_luma_holds_back_only_half_its_window(motion, window):
    _, _, both = motion
    radius = window // 2
    luma = LumaDeflicker(window=window)
    returned = 0
    for start in range(0, FRAMES, 2):
        returned += len(luma.push(both[start : start + 2], start))
        given = start + len(both[start : start + 2])
        assert luma.held <= radius
        assert returned == max(0, given - radius)  # out as soon as its window is in
        assert len(luma._means) <= 2 * radius + 2  # luma figures kept: one window's worth
    assert luma.most_held == radius
    assert len(luma.finish()) == radius


def test_deflicker_flow_reads_the_source_in_step_with_the_frames(motion):
    source, _, both = motion
    reads = [0]
    context = context_for(source, reads)
    flow = FlowDeflicker(context, strength=0.5, backend=flow_backend("dis"))
    for start in range(0, FRAMES, 3):
        out = flow.push(both[start : start + 3], start)
        assert len(out) == len(both[start : start + 3])  # nothing held back
        # flows come FLOW_BATCH pairs per backend call: never more source than that ahead
        assert reads[0] <= start + 3 + FLOW_BATCH
        assert flow.previous is not None and np.array_equal(flow.previous, out[-1])
    assert len(flow.finish()) == 0
    flow.close()
    context.close()


# ----------------------------------------------------------------------------- the chain


class _Plugin:
    def __init__(self, *items):
        self.items = items

    @hookimpl
    def register_postprocessors(self, register):
        for item in self.items:
            register(item)


class Invert:
    """A stateless post-processor that records the starts it was given."""

    name = "invert-test"
    description = "255 - frame"

    def __init__(self):
        self.starts: list[int] = []

    def process(self, frames, start):
        self.starts.append(start)
        return 255 - frames


class _Dropping:
    def __init__(self, extra: bool):
        self.extra = extra

    def push(self, frames, start):
        return np.concatenate([frames, frames[:1]]) if self.extra else frames

    def finish(self):
        return None


class Drops:
    name = "drops-test"
    options = {"extra": False}

    def open(self, context, extra=False):
        return _Dropping(extra)


class DropsLast(Drops):
    name = "drops-last-test"

    def open(self, context, extra=False):
        filter = LumaDeflicker(3)
        filter.finish = lambda: np.zeros((0, 0, 0, 3), np.uint8)  # loses the frame it held
        return filter


def _register(*items):
    plugins.get_plugin_manager().register(_Plugin(*items), name="postprocess-test")


def test_a_stateless_post_processor_runs_after_a_lagging_one(motion):
    _, _, both = motion
    invert = Invert()
    _register(invert)
    out = apply("deflicker-luma,invert-test", both, batch_size=4)
    assert np.array_equal(out, 255 - apply("deflicker-luma", both, batch_size=4))
    # luma holds 2 frames back: the next one sees 2, 4, 4, then the 2 let go at the end
    assert invert.starts == [0, 2, 6, 10]


def test_the_chain_refuses_a_post_processor_that_loses_or_adds_frames(motion):
    _, _, both = motion
    _register(Drops(), DropsLast())
    with pytest.raises(ValueError, match=r"'drops-last-test' returned 11 frames in all for the 12"):
        apply("drops-last-test", both, batch_size=5)
    with pytest.raises(ValueError, match=r"'drops-test' has returned 6 frames but was given only 5"):
        apply("drops-test:extra=true", both, batch_size=5)
    assert len(apply("drops-test", both, batch_size=5)) == FRAMES


# ----------------------------------------------------------------------------- the spec


def test_spec_settings_are_parsed_to_their_types():
    assert parse(" deflicker-luma , deflicker-flow:strength=0.7:flow=dis ,") == [
        ("deflicker-luma", []),
        ("deflicker-flow", [("strength", "0.7"), ("flow", "dis")]),
    ]
    luma, flow = resolve("deflicker-luma:window=7:max_gain=3,deflicker-flow:strength=1")
    assert (luma.name, luma.settings) == ("deflicker-luma", {"window": 7, "max_gain": 3.0})
    assert (flow.name, flow.settings) == ("deflicker-flow", {"strength": 1.0, "flow": ""})
    assert resolve(None) == [] and resolve("") == []


@pytest.mark.parametrize(
    "spec, error, message",
    [
        (
            "deflicker-luma:strength=1",
            ConfigError,
            "postprocess deflicker-luma: unknown setting 'strength' (known: window, max-gain)",
        ),
        ("deflicker-luma:window=abc", ConfigError, "postprocess deflicker-luma: window must be an integer, got 'abc'"),
        (
            "deflicker-luma:window=4",
            ConfigError,
            "postprocess deflicker-luma: window must be an odd number of frames, 3 or more, got 4",
        ),
        ("deflicker-luma:max-gain=0.5", ConfigError, "postprocess deflicker-luma: max-gain must be 1 or more, got 0.5"),
        (
            "deflicker-flow:strength=1.5",
            ConfigError,
            "postprocess deflicker-flow: strength must be between 0 and 1, got 1.5",
        ),
        (
            "deflicker-flow:strength=lots",
            ConfigError,
            "postprocess deflicker-flow: strength must be a number, got 'lots'",
        ),
        (
            "deflicker-flow:strength=nan",
            ConfigError,
            "postprocess deflicker-flow: strength must be a finite number, got nan",
        ),
        (
            "deflicker-luma:max-gain=inf",
            ConfigError,
            "postprocess deflicker-luma: max-gain must be a finite number, got inf",
        ),
        ("deflicker-flow:strength", ConfigError, "postprocess deflicker-flow: expected key=value, got 'strength'"),
        (
            "deflicker-flow:strength=0.2:strength=0.3",
            ConfigError,
            "postprocess deflicker-flow: strength is given twice",
        ),
        ("deflicker-flow:flow=nope", PluginError, "unknown flow backend 'nope'"),
        ("deflick", PluginError, "unknown postprocessor 'deflick'; available: deflicker-flow, deflicker-luma"),
        ("deflicker-luma,:window=3", ConfigError, "postprocess ':window=3': a post-processor's name comes first"),
    ],
)
def test_spec_mistakes_are_one_line_errors(spec, error, message):
    with pytest.raises(error) as raised:
        resolve(spec)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_a_stateless_post_processor_takes_no_settings():
    _register(Invert())
    assert resolve("invert-test")[0].settings == {}
    with pytest.raises(ConfigError, match=r"^postprocess invert-test: takes no settings, got x=1$"):
        resolve("invert-test:x=1")


# ----------------------------------------------------------------------------- in a run


RUN = dict(
    prompt="x",
    model="tiny",
    steps=2,
    inversion_steps=2,
    device="cpu",
    dtype="fp32",
    batch_size=4,
    editor="no-steps-test",
    propagator="none",
    size="64x48",
)


class NoSteps:
    """An editor that runs no denoising step: the run is read → encode → decode → post-process → write."""

    name = "no-steps-test"
    description = "VAE round trip"
    needs_inversion = False

    def plan(self, job):
        from vedit.method.denoise import EditPlan

        return EditPlan(timesteps=job.scheduler.timesteps[:0], start_latents=job.clean_latents)


class _EditorPlugin:
    @hookimpl
    def register_editors(self, register):
        register(NoSteps())


@pytest.fixture
def no_steps():
    plugins.get_plugin_manager().register(_EditorPlugin(), name="no-steps-test")


def test_a_run_post_processes_every_frame_as_the_chain_does_in_memory(no_steps, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4")
    spec = "deflicker-luma,deflicker-flow:strength=0.6"
    vedit.edit(clip, tmp_path / "plain", **RUN)
    vedit.edit(clip, tmp_path / "deflickered", postprocess=spec, **RUN)
    plain, written = FrameReader(tmp_path / "plain").read_all(), FrameReader(tmp_path / "deflickered").read_all()
    assert written.shape == plain.shape == (12, 48, 64, 3)
    expected = apply(spec, plain, context_for(FrameReader(clip, size=(64, 48)).read_all()), batch_size=5)
    assert np.array_equal(written, expected)
    assert not np.array_equal(written, plain)


def test_a_post_processor_that_loses_a_frame_fails_the_run_and_leaves_no_output(no_steps, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=6, size=(64, 48))
    _register(DropsLast())
    out = tmp_path / "out.mp4"
    with pytest.raises(ValueError, match="'drops-last-test' returned 5 frames in all for the 6"):
        vedit.edit(clip, out, postprocess="drops-last-test", **RUN)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


@pytest.mark.parametrize(
    "spec, code, message",
    [
        ("deflicker-flow:strength=2", 4, "--postprocess deflicker-flow: strength must be between 0 and 1"),
        ("deflicker-flow:strength=nan", 4, "--postprocess deflicker-flow: strength must be a finite number, got nan"),
        ("nope", 5, "unknown postprocessor 'nope'"),
        ("toml:deflicker-luma:window=2", 4, "--postprocess deflicker-luma: window must be an odd number"),
    ],
)
def test_a_bad_postprocess_flag_is_one_line_and_writes_nothing(tmp_path, spec, code, message):
    from vedit.cli import create_app

    clip = make_clip(tmp_path / "clip.mp4", frames=4)
    out = tmp_path / "out.mp4"
    args = ["run", str(clip), "-p", "x", "-o", str(out), "--model", "tiny", "--quiet"]
    if spec.startswith("toml:"):  # the same spec from vedit.toml
        (tmp_path / "vedit.toml").write_text(f'[run]\npostprocess = "{spec[5:]}"\n')
    else:
        args += ["--postprocess", spec]
    old = os.getcwd()
    os.chdir(tmp_path)  # no vedit.toml of the checkout's
    try:
        result = CliRunner().invoke(create_app(), args, catch_exceptions=False, env={"COLUMNS": "200"})
    finally:
        os.chdir(old)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code
    assert len(lines) == 1 and lines[0].startswith("vedit: error: ") and message in lines[0], result.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name not in ("clip.mp4", "cache", "vedit.toml")] == []

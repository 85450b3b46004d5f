"""`vedit eval`, CLIP scores and `vedit run --eval`: figures that would change if the code were wrong."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import make_clip, one_error_line
from helpers.clips import frame_numbers, gapped_clip, graded_vfr_clip
from vedit.cli import create_app
from vedit.io.probe import probe
from vedit.io.reader import FrameReader
from vedit.io.timing import resampling
from vedit.io.writer import VideoWriter

FAST = ["--model", "tiny", "--steps", "2", "--inversion-steps", "2", "--chunk-size", "4", "--size", "64x48"]


def vedit(*args):
    return CliRunner().invoke(create_app(), [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "200"})


def write_frames(folder: Path, frames) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(np.asarray(frame, dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return folder


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour texture: blurred noise, so that optical flow can follow it."""
    rng = np.random.default_rng(seed)
    image = rng.random((height, width, 3))
    kernel = np.exp(-0.5 * (np.arange(-6, 7) / 2.5) ** 2)
    kernel /= kernel.sum()
    for axis in (0, 1):
        image = np.apply_along_axis(lambda line: np.convolve(line, kernel, mode="same"), axis, image)
    image = (image - image.min()) / (image.max() - image.min())
    return (image * 255).round().astype(np.uint8)


def translating(frames: int = 8, size=(96, 64), shift: int = 2) -> list[np.ndarray]:
    """A window moving right over a texture by ``shift`` whole pixels per frame."""
    width, height = size
    canvas = texture(height + 16, width + frames * shift + 16)
    return [canvas[8 : 8 + height, 8 + i * shift : 8 + i * shift + width] for i in range(frames)]


def flickered(frames: list[np.ndarray], amount: int = 16) -> list[np.ndarray]:
    return [
        np.clip(f.astype(int) + (amount if i % 2 else -amount), 0, 255).astype(np.uint8) for i, f in enumerate(frames)
    ]


@pytest.fixture(scope="module")
def moving(tmp_path_factory) -> Path:
    return write_frames(tmp_path_factory.mktemp("moving") / "src", translating())


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP saved as a folder (config, weights, tokenizer, image processor)."""
    from transformers import CLIPConfig, CLIPModel

    from vedit.model.builders import build_tokenizer
    from vedit.quality.clip_score import _image_processor_class

    tokenizer = build_tokenizer()
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    processor = _image_processor_class()(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, tokenizer, processor


def direct_text_cosines(tiny_clip, frames, prompt: str) -> np.ndarray:
    """Cosine of the prompt with each frame, from the model's own forward (not vedit's code)."""
    _, model, tokenizer, processor = tiny_clip
    tokens = tokenizer([prompt], return_tensors="pt")
    pixels = processor(images=[np.asarray(f) for f in frames], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
    image = torch.nn.functional.normalize(out.image_embeds.double(), dim=-1)
    text = torch.nn.functional.normalize(out.text_embeds.double(), dim=-1)
    return (image @ text.T)[:, 0].numpy()


# --------------------------------------------------------------------------- CLIP scores


def test_clip_scores_with_a_tiny_clip(tiny_clip):
    from vedit.quality.clip_score import load_clip, score_frames, unavailable_reason

    folder = tiny_clip[0]
    assert unavailable_reason(str(folder)) is None
    scorer = load_clip(str(folder))
    assert scorer.device.type in ("cpu", "cuda") and scorer.max_tokens == 77
    frames = translating(frames=20)  # more than one batch of 16
    same = score_frames(scorer, [frames[0]] * 20, "a red fox")
    assert len(same.consistency_pairs) == 19
    assert same.frame_consistency == pytest.approx(1.0, abs=1e-6)
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in same.consistency_pairs)

    noise = [np.random.default_rng(i).integers(0, 256, (64, 96, 3), dtype=np.uint8) for i in range(20)]
    figures = score_frames(scorer, noise, "a red fox")
    expected = direct_text_cosines(tiny_clip, noise, "a red fox")
    assert np.allclose(figures.text_frames, expected, atol=1e-5)
    assert figures.text_score == pytest.approx(float(expected.mean()), abs=1e-5)
    assert figures.frame_consistency < 1 - 1e-4
    assert len(figures.text_frames) == 20 and len(figures.consistency_pairs) == 19
    # the batch boundary (16) does not change the pair across it
    embeddings = scorer.embed_images(noise)
    assert figures.consistency_pairs[15] == pytest.approx(float(embeddings[15] @ embeddings[16]), abs=1e-9)


def test_clip_model_that_is_not_here(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from vedit.quality.clip_score import DEFAULT_CLIP, ClipUnavailable, load_clip, unavailable_reason

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert "not in the local Hugging Face cache" in unavailable_reason(DEFAULT_CLIP)
    assert "does not exist" in unavailable_reason(str(tmp_path / "nope") + "/")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    reason = unavailable_reason(str(tmp_path / "half"))
    assert "preprocessor_config.json" in reason and "\n" not in reason
    with pytest.raises(ClipUnavailable) as caught:
        load_clip(DEFAULT_CLIP)
    assert caught.value.reason == unavailable_reason(DEFAULT_CLIP)


# --------------------------------------------------------------------------- vedit eval


def test_warp_error_of_a_clip_against_itself_and_of_a_flickered_copy(moving, tmp_path, tiny_clip):
    same_json, flicker_json = tmp_path / "same.json", tmp_path / "flicker.json"
    same = vedit("eval", moving, "--source", moving, "--json", same_json, "--clip", tiny_clip[0], "-p", "a red fox")
    assert same.exit_code == 0, same.output
    report = json.loads(same_json.read_text())
    edit, source = report["edit"], report["source"]
    assert report["format"] == "vedit-eval/1" and report["warp_error_unit"] == 0.001
    assert (report["frames"], report["pairs"], report["size"], report["flow"]) == (8, 7, [96, 64], "dis")
    assert report["files"]["source_frames"] == "0:8:1"
    assert edit["warp_error_pairs"] == source["warp_error_pairs"]  # the edit is the source: equal to the floor
    assert edit["warp_error"] == source["warp_error"] < 0.5  # a pure translation warps back almost exactly
    assert len(edit["warp_error_pairs"]) == 7 and edit["skipped_pairs"] == 0
    assert np.mean(edit["warp_error_pairs"]) == pytest.approx(edit["warp_error"], rel=1e-12)
    assert report["clip"] == {"model": str(tiny_clip[0]), "missing": None}
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(moving.glob("*.png"))]
    expected = direct_text_cosines(tiny_clip, frames, "a red fox")
    assert edit["clip_text_score"] == pytest.approx(float(expected.mean()), abs=1e-5)
    assert np.allclose(edit["clip_text_frames"], expected, atol=1e-5)
    assert edit["clip_frame_consistency"] == source["clip_frame_consistency"] < 1
    text = " ".join(same.stdout.split())
    assert "warp error (x1e-3)" in text and "source (floor)" in text and f"{edit['warp_error']:.3f}" in text

    flicker = write_frames(tmp_path / "flicker", flickered(frames))
    result = vedit("eval", flicker, "--source", moving, "--json", flicker_json, "--clip", tiny_clip[0])
    assert result.exit_code == 0, result.output
    flickering = json.loads(flicker_json.read_text())
    assert flickering["source"]["warp_error"] == pytest.approx(source["warp_error"], rel=1e-12)  # same floor
    # ±16 levels alternating: about 3 · (32/255)² = 47 x1e-3 per pair, far above the floor
    assert flickering["edit"]["warp_error"] > 30 > 50 * source["warp_error"]
    pairs = flickering["edit"]["warp_error_pairs"]
    assert np.mean(pairs) == pytest.approx(flickering["edit"]["warp_error"], rel=1e-12)
    assert flickering["prompt"] is None and flickering["edit"]["clip_text_score"] is None


def test_identical_frames_have_clip_frame_consistency_one(tmp_path, tiny_clip):
    still = write_frames(tmp_path / "still", [texture(48, 64, seed=3)] * 6)
    out = tmp_path / "still.json"
    result = vedit("eval", still, "--source", still, "--clip", tiny_clip[0], "--json", out, "-p", "x")
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    for clip in ("edit", "source"):
        assert report[clip]["clip_frame_consistency"] == pytest.approx(1.0, abs=1e-6)
        assert report[clip]["warp_error"] == pytest.approx(0.0, abs=1e-9)  # nothing moves, nothing changes


def test_a_longer_source_uses_its_first_frames_or_the_selection(moving, tmp_path):
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(moving.glob("*.png"))]
    start = write_frames(tmp_path / "start", frames[:5])
    result = vedit("eval", start, "--source", moving, "--json", tmp_path / "a.json")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "comparing with source frames" in line]
    assert len(notes) == 1 and "0:5:1" in notes[0]
    first = json.loads((tmp_path / "a.json").read_text())
    assert first["frames"] == 5 and first["edit"]["warp_error_pairs"] == first["source"]["warp_error_pairs"]

    middle = write_frames(tmp_path / "middle", frames[2:8:2])
    result = vedit("eval", middle, "--source", moving, "--source-frames", "2:8:2", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    chosen = json.loads((tmp_path / "b.json").read_text())
    assert chosen["files"]["source_frames"] == "2:8:2"
    assert chosen["edit"]["warp_error_pairs"] == chosen["source"]["warp_error_pairs"]
    assert "comparing" not in result.stderr


def test_without_a_clip_model_one_line_says_so_and_the_rest_is_reported(moving, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    out = tmp_path / "r.json"
    result = vedit("eval", moving, "--source", moving, "-p", "a red fox", "--json", out)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "left out" in line]
    assert len(lines) == 1 and lines[0].startswith("vedit: warning: CLIP scores are left out: ")
    assert "openai/clip-vit-large-patch14" in lines[0]
    report = json.loads(out.read_text())
    assert report["clip"]["model"] is None and "local Hugging Face cache" in report["clip"]["missing"]
    assert report["edit"]["clip_frame_consistency"] is None and report["edit"]["clip_frame_pairs"] is None
    assert math.isfinite(report["edit"]["warp_error"])
    assert "warp error (x1e-3)" in result.stdout


def test_errors_end_in_one_line_and_leave_no_json(moving, tmp_path):
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(moving.glob("*.png"))]
    short = write_frames(tmp_path / "short", frames[:4])
    text = tmp_path / "notes.txt"
    text.write_text("not a video")
    out = tmp_path / "r.json"
    cases = [
        (["eval", tmp_path / "missing.mp4", "--source", moving], "no such file"),
        (["eval", moving, "--source", short], "has 4 frames"),
        (["eval", moving, "--source", moving, "--flow", "nosuch"], "unknown flow backend 'nosuch'"),
        (["eval", text, "--source", moving], "not a readable video"),
        (["eval", moving, "--source", moving, "--source-frames", "100:"], "--source-frames"),
        (["eval", moving, "--source", moving, "--json", tmp_path / "no" / "such.json"], "does not exist"),
    ]
    for args, fragment in cases:
        result = vedit(*args, "--json", out) if "--json" not in args else vedit(*args)
        assert result.exit_code != 0, args
        assert fragment in one_error_line(result), args
        assert not out.exists() and not list(tmp_path.glob("*.json")) and not list(tmp_path.glob(".*.partial"))


# --------------------------------------------------------------------------- timelines


def repeats(shown: list[int]) -> list[int]:
    """Pairs (t, t+1) of frames read that show one source frame twice."""
    return [t for t in range(len(shown) - 1) if shown[t] == shown[t + 1]]


def assert_pairs_line_up(report: dict, repeated: list[int]) -> None:
    """One entry per pair reported, null exactly at the repeated ones, and the counts to match."""
    pairs = report["pairs"]
    assert pairs == report["frames"] - 1
    for figures in (report["edit"], report["source"]):
        values = figures["warp_error_pairs"]
        assert len(values) == pairs
        assert [t for t, v in enumerate(values) if v is None] == repeated
        assert (figures["measured_pairs"], figures["skipped_pairs"], figures["repeated_pairs"]) == (
            pairs - len(repeated), len(repeated), len(repeated),
        )  # fmt: skip
        measured = [v for v in values if v is not None]
        assert figures["warp_error"] == pytest.approx(np.mean(measured), rel=1e-12)


def test_a_clip_with_a_timestamp_gap_against_itself_compares_exactly_what_it_reports(tmp_path, tiny_clip):
    clip = gapped_clip(tmp_path / "gapped.mp4")  # 20 frames; at its average 20 fps, 18 that show frame 1 twice
    info = probe(clip)
    shown = frame_numbers(FrameReader(clip, size=(64, 48)).read_all())
    assert len(shown) == 18 and repeats(shown) == [1]
    out = tmp_path / "r.json"
    result = vedit("eval", clip, "--source", clip, "--json", out, "--clip", tiny_clip[0])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    # It said "frames 20 (19 pairs)" and "19 of 19" measured, over 0:18:1 and 17 pair values.
    assert (report["frames"], report["pairs"], report["files"]["source_frames"]) == (18, 17, "0:18:1")
    assert_pairs_line_up(report, [1])
    for figures in (report["edit"], report["source"]):
        # Distinct frames differ by about 3 grey levels: none scores 0 (the repeat did, exactly).
        assert min(v for v in figures["warp_error_pairs"] if v is not None) > 0.1
        assert len(figures["clip_frame_pairs"]) == 17 and figures["clip_frame_pairs"][1] is None
        consistency = [v for v in figures["clip_frame_pairs"] if v is not None]
        assert figures["clip_frame_consistency"] == pytest.approx(np.mean(consistency), rel=1e-12)
    change = resampling(info)
    assert (change.dropped, change.repeated) == (2, 1)
    assert report["timeline"] == {"keep_timestamps": False, "fps": "20", "dropped_frames": 2, "repeated_frames": 1}
    note = f"{change.summary(info.fps)}; 1 pair of a repeated frame not measured"
    assert len(report["notes"]) == 1 and report["notes"][0].startswith(note)
    assert f"vedit: note: {note}" in " ".join(result.stderr.split())
    text = " ".join(result.stdout.split())
    assert "frames 18 (17 pairs)" in text
    assert "read at the source's average 20 fps: 2 frames dropped, 1 repeated" in text
    assert "pairs measured │ 16 of 17 │ 16 of 17" in text and "pairs skipped: repeated frame │ 1 │ 1" in text

    # Frame by frame at their own times, as an edit made with --keep-timestamps is: all 20, no repeat.
    result = vedit("eval", clip, "--source", clip, "--json", out, "--keep-timestamps")
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert (report["frames"], report["pairs"], report["files"]["source_frames"]) == (20, 19, "0:20:1")
    assert_pairs_line_up(report, [])
    assert min(report["source"]["warp_error_pairs"]) > 0.1 and report["notes"] == []
    assert report["timeline"] == {"keep_timestamps": True, "fps": None, "dropped_frames": 0, "repeated_frames": 0}
    assert "each frame once, at its own time (--keep-timestamps)" in " ".join(result.stdout.split())
    # The same default as vedit run's, from vedit.toml.
    config = tmp_path / "vedit.toml"
    config.write_text("[run]\nkeep-timestamps = true\n")
    assert vedit("eval", clip, "--source", clip, "--json", out, "--config", config).exit_code == 0
    assert json.loads(out.read_text())["frames"] == 20


def test_a_variable_rate_clip_is_compared_on_the_edit_s_timeline(tmp_path):
    """Two copies of a variable-rate clip, as the two kinds of edit write it: at its average rate
    (constant), and with its own frame times (--keep-timestamps)."""
    source = graded_vfr_clip(tmp_path / "vfr.mp4")  # 60 frames: 24 fps, a gap, then 50 fps
    info = probe(source)
    change = resampling(info)
    constant = FrameReader(source, size=(64, 48), info=info)
    own_times = FrameReader(source, size=(64, 48), info=info, keep_timestamps=True)
    with VideoWriter(tmp_path / "constant.mp4", fps=info.fps) as writer:
        writer.write(constant.read_all())
    with VideoWriter(tmp_path / "own_times.mkv", fps=info.fps, timestamps=own_times.timestamps) as writer:
        writer.write(own_times.read_all())
    shown = list(change.shown)
    assert len(shown) == 60 and len(repeats(shown)) == change.repeated == 16 and change.dropped == 15

    reports = {}
    for edit, flags in (("constant.mp4", ()), ("own_times.mkv", ("--keep-timestamps",))):
        out = tmp_path / f"{edit}.json"
        result = vedit("eval", tmp_path / edit, "--source", source, "--json", out, *flags)
        assert result.exit_code == 0, result.output
        assert "frame times" not in result.stderr, edit
        reports[edit] = report = json.loads(out.read_text())
        assert (report["frames"], report["pairs"], report["files"]["source_frames"]) == (60, 59, "0:60:1")
        # The edit is the source, frame for frame: its pair errors follow the source's.
        edit_pairs, source_pairs = report["edit"]["warp_error_pairs"], report["source"]["warp_error_pairs"]
        for mine, floor in zip(edit_pairs, source_pairs):
            assert (mine is None) == (floor is None)
            assert mine is None or mine == pytest.approx(floor, rel=0.15, abs=0.05)
    assert_pairs_line_up(reports["constant.mp4"], repeats(shown))
    constant_notes = reports["constant.mp4"]["notes"]
    assert reports["constant.mp4"]["timeline"]["dropped_frames"] == 15
    assert len(constant_notes) == 1 and "15 frames dropped, 16 repeated" in constant_notes[0]
    assert_pairs_line_up(reports["own_times.mkv"], [])
    assert reports["own_times.mkv"]["notes"] == []

    # Read frame by frame, the constant-rate edit's times are not the source's: said, not passed over.
    result = vedit("eval", tmp_path / "constant.mp4", "--source", source, "--keep-timestamps")
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if "frame times" in line]
    assert len(warned) == 1 and warned[0].startswith("vedit: warning: ")
    assert "frame times are not the source's (frame " in warned[0] and "evaluated without it" in warned[0]


# --------------------------------------------------------------------------- vedit run --eval


def test_run_with_eval_writes_the_report_beside_the_output(tmp_path, tiny_clip):
    clip = make_clip(tmp_path / "clip.mp4")
    out = tmp_path / "o" / "out.mp4"
    out.parent.mkdir()
    result = vedit("run", clip, "-p", "a watercolor", "-o", out, *FAST, "--eval", "--clip", tiny_clip[0])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.eval.json", "out.mp4"]
    report = json.loads((out.parent / "out.eval.json").read_text())
    assert report["frames"] == 12 and report["files"]["source_frames"] == "0:12:1"
    assert report["prompt"] == "a watercolor" and report["size"] == [64, 48]
    assert report["edit"]["clip_text_score"] is not None and report["source"]["warp_error"] is not None
    summary = " ".join(result.stdout.split())
    assert f"eval {out.parent / 'out.eval.json'}: warp error {report['edit']['warp_error']:.3f} x1e-3" in summary


def test_run_eval_on_a_clip_with_a_timestamp_gap_lines_up_with_the_edited_frames(tmp_path):
    clip = gapped_clip(tmp_path / "gapped.mp4")  # read at its average rate: 18 frames, frame 1 twice
    out = tmp_path / "out.mp4"
    result = vedit("run", clip, "-p", "a watercolor", "-o", out, *FAST, "--eval", "--clip", tmp_path / "no-clip")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out.eval.json").read_text())
    edited = FrameReader(out, size=(64, 48)).read_all()
    assert report["frames"] == len(edited) == 18 and report["files"]["source_frames"] == "0:18:1"
    assert_pairs_line_up(report, [1])
    assert min(v for v in report["source"]["warp_error_pairs"] if v is not None) > 0.1
    assert len(report["notes"]) == 1 and "2 frames dropped, 1 repeated" in report["notes"][0]
    summary = " ".join(result.stdout.split())
    assert "1 of 17 pairs skipped as repeated frames" in summary
    # The same figures as evaluating the written edit on its own, on the same timeline.
    alone = tmp_path / "alone.json"
    assert vedit("eval", out, "--source", clip, "--json", alone, "--clip", tmp_path / "no-clip").exit_code == 0
    again = json.loads(alone.read_text())
    assert again["edit"]["warp_error_pairs"] == report["edit"]["warp_error_pairs"]
    assert again["source"]["warp_error_pairs"] == report["source"]["warp_error_pairs"]


def test_python_api_result_carries_the_evaluation(tmp_path, monkeypatch):
    import huggingface_hub.constants

    import vedit as api
    from vedit.quality.evaluate import Report

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    clip = make_clip(tmp_path / "clip.mp4")
    with pytest.warns(UserWarning, match="CLIP scores are left out") as caught:
        result = api.edit(
            clip,
            tmp_path / "frames",
            prompt="x",
            model="tiny",
            steps=2,
            inversion_steps=2,
            chunk_size=4,
            size="64x48",
            output_size="working",
            frames="2:10:2",
            eval=True,
        )
    assert sum("left out" in str(w.message) for w in caught) == 1  # checked before the run, not again after
    assert isinstance(result.evaluation, Report)
    assert result.evaluation.frames == result.frames == 4
    assert result.evaluation.source_frames == "2:10:2"
    assert result.evaluation.path == tmp_path / "frames.eval.json"  # beside the PNG folder, not in it
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [f"{i:05d}.png" for i in range(4)]
    written = json.loads((tmp_path / "frames.eval.json").read_text())
    assert written["edit"]["warp_error"] == pytest.approx(result.evaluation.edit.warp_error)


def test_run_eval_with_an_unknown_flow_fails_before_any_work(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=4)
    out = tmp_path / "o.mp4"
    result = vedit("run", clip, "-p", "x", "-o", out, *FAST, "--eval", "--flow", "nosuch")
    assert result.exit_code != 0
    assert "unknown flow backend 'nosuch'" in one_error_line(result)
    assert not out.exists() and not (tmp_path / "o.eval.json").exists()
    assert vedit("run", "--help").exit_code == 0
    assert "--no-eval" in " ".join(vedit("run", "--help").stdout.split())

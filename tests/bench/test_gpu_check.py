"""``bench/gpu/check.sh --device cpu``: the GPU check's every part, run here with the tiny model and PyAV and ffmpeg
made unimportable as on the GPU machine, so that each flag and suite it calls keeps working until a GPU runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "bench" / "gpu" / "check.sh"
PARTS = ["tests", "edit-40", "calls", "nn", "edit-40-compile", "unet", "edit-120", "memory"]

# What the GPU machine lacks, made so here: a sitecustomize that every Python the check starts runs first.
WITHOUT_VIDEO_IO = """
import sys
for name in ("av", "ffmpeg", "imageio_ffmpeg"):
    sys.modules[name] = None
"""


@pytest.fixture(scope="module")
def check(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    blocked = tmp_path_factory.mktemp("without-video-io")
    (blocked / "sitecustomize.py").write_text(WITHOUT_VIDEO_IO)
    out = tmp_path_factory.mktemp("out")
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(blocked), "TMPDIR": str(out.parent)}
    done = subprocess.run(
        ["bash", str(CHECK), "--device", "cpu", "--out", str(out)],
        cwd=tmp_path_factory.mktemp("elsewhere"),  # the script finds the repository by its own path
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    return out, done


@pytest.mark.slow  # every part once: a few minutes on 2 cores, most of it inductor compiling the tiny passes
def test_every_part_runs_and_writes_its_results(check):
    out, done = check
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["check.json", "log.txt", "summary.md"]
    result = json.loads((out / "check.json").read_text())
    assert result["format"] == "vedit-gpu-check/1" and result["device"] == "cpu" and result["model"] == "tiny"
    parts = {p["name"]: p for p in result["parts"]}
    assert list(parts) == PARTS
    assert {name: p["status"] for name, p in parts.items()} == {name: "ok" for name in PARTS}, done.stdout[-3000:]
    assert all(0 < p["seconds"] <= p["budget_s"] for p in parts.values())
    assert result["budget_s"] == sum(p["budget_s"] for p in parts.values())
    assert result["environment"]["device"] == "cpu" and result["environment"]["diffusers"]
    # no GPU here: the CUDA-only tests were all collected, and all skipped
    tests = parts["tests"]["tests"]
    assert tests["passed"] == tests["failed"] == tests["errors"] == 0 and tests["skipped"] >= 8

    documents = {name: p["document"] for name, p in parts.items() if name != "tests"}
    for name in ("edit-40", "edit-40-compile", "edit-120"):
        doc = documents[name]
        assert doc["suite"] == "edit" and doc["header"]["settings"]["clip_format"] == "png"
        rows = {r["stage"]: r for r in doc["rows"]}
        assert {"invert", "keyframe", "propagation", "decode", "total"} <= set(rows)
        assert rows["total"]["forwards_per_s"] > 0 and rows["total"]["tflops"] > 0 and rows["total"]["of_peak"] > 0
        assert doc["device_memory_mb"] is None  # CUDA's alone
    assert documents["edit-40"]["header"]["settings"]["frames"] == 4
    assert documents["edit-120"]["header"]["settings"]["frames"] == 6
    assert set(documents["edit-40-compile"]["engines"].values()) == {"compile"}
    assert {r["path"] for r in documents["calls"]["rows"]} == {"plain", "vedit"}
    assert all(r["vs_plain"] > 0 for r in documents["calls"]["rows"])
    assert {r["backend"] for r in documents["nn"]["rows"]} >= {"torch", "in-graph"}
    assert {(r["pass"], r["engine"]) for r in documents["unet"]["rows"]} >= {
        (p, e) for p in ("plain", "keyframe", "propagation") for e in ("eager", "compile")
    }
    (memory,) = documents["memory"]["rows"]
    assert memory["frames"] == 8 and memory["peak_rss_mb"] > 0

    summary = (out / "summary.md").read_text()
    assert summary.startswith("# vedit GPU check (cpu)")
    assert "| part | status | s | budget s | result |" in summary
    for name in PARTS:
        assert f"| {name} | ok |" in summary
    for heading in ("## edit-40", "## edit-40-compile", "## edit-120", "## calls", "## nn", "## unet", "## memory"):
        assert heading + "\n" in summary
    assert "| stage | s | share | UNet fwd | fwd/s | TFLOP/s | of peak |" in summary


def test_a_device_other_than_cpu_or_cuda_is_refused_in_one_line(tmp_path):
    done = subprocess.run(
        ["bash", str(CHECK), "--device", "mps", "--out", str(tmp_path / "out")], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr == "check.sh: --device takes cpu or cuda, not 'mps'\n"
    assert not (tmp_path / "out").exists()


def test_the_summary_says_which_parts_timed_out_or_failed_and_which_tests_failed(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check_summary", REPO / "bench" / "gpu" / "summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "parts").mkdir(parents=True)
    out.mkdir()
    (work / "settings.json").write_text(json.dumps({"device": "cuda", "budget_s": 525}))
    (work / "status.tsv").write_text("tests\t50\t41.5\t1\nedit-40\t90\t100.2\t124\nnn\t15\t3.0\t2\n")
    (work / "parts" / "tests.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.e2e.test_cuda" name="test_a"/>'
        '<testcase classname="tests.e2e.test_cuda" name="test_b"><failure message="assert 2 == 0&#10;more"/></testcase>'
        '<testcase classname="tests.e2e.test_cuda" name="test_c"><skipped message="no"/></testcase>'
        "</testsuite></testsuites>"
    )
    (work / "parts" / "edit-40.log").write_text("bench edit: warm-up 1/1\n\n")
    (work / "parts" / "nn.log").write_text("vedit: error: --seqs takes numbers of 1 or more, got '0'\n")
    summary.main([str(work), str(out)])
    check = json.loads((out / "check.json").read_text())
    assert [(p["name"], p["status"], p["exit_code"]) for p in check["parts"]] == [
        ("tests", "failed", 1),
        ("edit-40", "timed out", 124),
        ("nn", "failed", 2),
    ]
    assert check["seconds"] == 144.7 and check["parts"][1]["document"] is None
    assert check["parts"][0]["tests"] == {
        "passed": 1, "failed": 1, "errors": 0, "skipped": 1,
        "failures": [{"test": "tests.e2e.test_cuda::test_b", "message": "assert 2 == 0"}],
    }  # fmt: skip
    text = (out / "summary.md").read_text()
    assert "| tests | failed | 42 | 50 | 1 passed, 1 failed, 0 errors, 1 skipped |" in text
    assert "| edit-40 | timed out | 100 | 90 | bench edit: warm-up 1/1 |" in text
    assert "| nn | failed | 3 | 15 | vedit: error: --seqs takes numbers of 1 or more, got '0' |" in text
    assert check["parts"][2]["last_line"] == "vedit: error: --seqs takes numbers of 1 or more, got '0'"
    assert "- `tests.e2e.test_cuda::test_b`: assert 2 == 0" in text

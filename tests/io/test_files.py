"""Output paths: what vedit did not write is replaced only when asked, and bad or unwritable outputs are
refused before any work."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import pytest
from PIL import Image

from helpers.clips import coloured_frames, ffmpeg_run, no_leftovers, sample_clips
from vedit.errors import OutputError
from vedit.io.files import check_output_path, written_by_vedit
from vedit.io.probe import probe
from vedit.io.writer import VideoWriter


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return sample_clips(tmp_path_factory)


def test_folder_with_other_files_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "holiday").mkdir()
    (tmp_path / "holiday" / "beach.jpg").write_bytes(b"precious")
    with pytest.raises(OutputError, match="already holds other files"):
        VideoWriter(tmp_path / "holiday", fps=Fraction(24))


@pytest.mark.parametrize("name", ["out.mp4", "out.mov", "out.mkv", "out.webm", "out.gif", "frames"])
def test_what_vedit_did_not_write_is_replaced_only_when_asked(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    if name == "frames":  # numbered frames someone else saved
        out.mkdir()
        for i in range(3):
            Image.fromarray(coloured_frames(1)[0]).save(out / f"{i:05d}.png")
    else:  # a video someone else made, with a comment of its own
        ffmpeg_run("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10", "-frames:v", "3", "-metadata", "comment=holiday",
                   str(out))  # fmt: skip
    before = {p.name: p.read_bytes() for p in ([out] if out.is_file() else sorted(out.iterdir()))}
    assert not written_by_vedit(out)
    with pytest.raises(OutputError) as refused:
        VideoWriter(out, fps=Fraction(30))
    assert str(refused.value) == f"{out} exists and was not written by vedit; pass --overwrite to replace it"
    assert {p.name: p.read_bytes() for p in ([out] if out.is_file() else sorted(out.iterdir()))} == before
    with VideoWriter(out, fps=Fraction(30), overwrite=True) as writer:
        writer.write(coloured_frames(5))
    assert written_by_vedit(out) and probe(out).num_frames == 5
    with VideoWriter(out, fps=Fraction(30)) as writer:  # what vedit wrote, it replaces without being asked
        writer.write(coloured_frames(4))
    assert written_by_vedit(out) and probe(out).num_frames == 4 and no_leftovers(tmp_path)


def test_an_empty_folder_and_a_missing_output_need_no_overwrite(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert check_output_path(tmp_path / "empty", None) == tmp_path / "empty"
    assert check_output_path(tmp_path / "new.mp4", None) == tmp_path / "new.mp4"
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all")
    assert not written_by_vedit(text)
    with pytest.raises(OutputError, match="notes.mp4 exists and was not written by vedit"):
        check_output_path(text, None)


def test_bad_outputs_are_refused_before_any_work(tmp_path: Path, clips: dict[str, Path]) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    cases = [
        (tmp_path / "missing" / "out.mp4", "does not exist"),
        (a_file / "out.mp4", "is a file, not a folder"),
        (tmp_path / "out.txt", "cannot write .txt files"),
        (a_file, "is a file; give a new folder name"),
    ]
    for path, message in cases:
        with pytest.raises(OutputError, match=message):
            VideoWriter(path, fps=Fraction(30))
    with pytest.raises(OutputError, match="this is the input"):
        check_output_path(clips["ntsc_audio"], clips["ntsc_audio"])
    assert check_output_path(tmp_path / "new.mkv", clips["ntsc_audio"]) == tmp_path / "new.mkv"


def test_unwritable_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root writes anywhere, so let the permission check see what a user would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    try:
        with pytest.raises(OutputError, match="locked: folder is not writable"):
            VideoWriter(locked / "out.mp4", fps=Fraction(30))
    finally:
        locked.chmod(0o700)

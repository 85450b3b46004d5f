"""A third-party package's own options on every surface vedit derives from their declaration: the example
package's editor ``tint`` (``amount`` changes the frames, ``verbose`` does not) in ``vedit run --help``,
``vedit plugins --options``, one-line range errors, vedit.toml, job files, batch digests and the Python API."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import one_error_line, vedit
from helpers.jobs import batch_clips
from vedit import edit, plugins
from vedit.batch.plan import plan_batch
from vedit.config import load_config
from vedit.errors import ModelError
from vedit.io.reader import FrameReader

FAST = ["--model", "tiny", "--size", "64x48", "--max-frames", "4", "--propagator", "none"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Two 4-frame clips in a folder of their own."""
    return batch_clips(tmp_path_factory.mktemp("batch-clips"))


def tint_options(**values):
    """The editor's own Options class, as the installed package declares it, with ``values``."""
    return plugins.get("editor", "tint").Options(**values)


def panel(help_text: str, title: str) -> str:
    """The lines of one help panel of ``vedit run --help``, its title line first."""
    lines = help_text.splitlines()
    first = next(i for i, line in enumerate(lines) if f"─ {title} ─" in line)
    last = next(i for i in range(first, len(lines)) if lines[i].startswith("╰"))
    return "\n".join(lines[first : last + 1])


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    """The rows of a rich table whose first cell is ``first_cell``, as lists of stripped cells."""
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines() if "│" in line]
    return [row for row in rows if row and row[0] == first_cell]


def tint_job_file(path: Path, clip: Path, run: str = "", job: str = "") -> Path:
    path.write_text(
        f'[run]\nmodel = "tiny"\neditor = "tint"\npropagator = "none"\n{run}\n'
        f'[[job]]\nname = "one"\ninput = "{clip}"\nprompt = "x"\noutput = "out/{{clip}}.mp4"\n{job}'
    )
    return path


def test_its_flags_are_in_run_help_in_a_panel_of_its_own(example_plugin):
    result = vedit("run", "--help")
    assert result.exit_code == 0
    tint = panel(result.stdout, "editor 'tint'")
    assert "--tint-amount" in tint and "How far to shift the latents. (between 0 and 1) [default: 0.5]" in tint
    assert "--tint-verbose" in tint and "--no-tint-verbose" in tint and "Say the shift applied, as a warning." in tint
    assert result.stdout.count("--tint-amount") == 1  # in that panel and nowhere else
    assert "--tint-amount" not in panel(result.stdout, "editor 'pnp'")


def test_vedit_plugins_options_lists_them_with_type_default_range_and_effect(example_plugin):
    result = vedit("plugins", "--options")
    assert result.exit_code == 0
    assert table_rows(result.stdout, "editor tint") == [
        ["editor tint", "--tint-amount", "float", "0.5", "between 0 and 1", "changes", "How far to shift the latents."],
        ["editor tint", "--tint-verbose", "bool", "False", "-", "-", "Say the shift applied, as a warning."],
    ]


def test_a_value_out_of_range_is_one_line_and_exit_4_before_the_model_loads(
    example_plugin, clip, tmp_path, monkeypatch
):
    from vedit.model import loading

    loads = []

    def loader(*args, **kwargs):
        loads.append(args)
        raise ModelError("the model loader was reached")

    monkeypatch.setattr(loading, "load_model", loader)
    args = ["run", clip, "-p", "x", "-o", tmp_path / "o.mp4", "--editor", "tint", *FAST]
    # In range, the run gets as far as loading the model: the loader above is the one it calls.
    reached = vedit(*args, "--tint-amount", "1", cwd=tmp_path)
    assert one_error_line(reached) == "vedit: error: the model loader was reached" and len(loads) == 1

    by_flag = vedit(*args, "--tint-amount", "1.5", cwd=tmp_path)
    assert by_flag.exit_code == 4
    assert one_error_line(by_flag) == "vedit: error: --tint-amount must be between 0 and 1, got 1.5"

    (tmp_path / "vedit.toml").write_text("[run.tint]\namount = -0.25\n")
    by_file = vedit(*args, cwd=tmp_path)
    assert by_file.exit_code == 4
    line = one_error_line(by_file)
    assert line.endswith("vedit.toml: [run.tint] option 'amount' must be between 0 and 1, got -0.25"), line
    assert len(loads) == 1 and not (tmp_path / "o.mp4").exists()


def test_vedit_toml_sets_them_in_a_table_of_their_own_or_by_flat_key_and_a_flag_wins(example_plugin, clip, tmp_path):
    (tmp_path / "vedit.toml").write_text('[run]\neditor = "tint"\n\n[run.tint]\namount = 0.25\nverbose = true\n')
    assert load_config(cwd=tmp_path).plugin_options("tint") == tint_options(amount=0.25, verbose=True)
    assert load_config(cwd=tmp_path, tint_amount=0.1).plugin_options("tint") == tint_options(amount=0.1, verbose=True)
    (tmp_path / "vedit.toml").write_text("[run]\ntint-amount = 0.75\ntint_verbose = true\n")
    assert load_config(cwd=tmp_path).plugin_options("tint") == tint_options(amount=0.75, verbose=True)

    # The command line reads the same file, and the editor's plan() gets the values in job.options.
    with pytest.warns(UserWarning, match=r"^tint: amount 0\.75 on 4 frames$"):
        result = vedit("run", clip, "-p", "x", "-o", tmp_path / "o.mp4", "--editor", "tint", *FAST, cwd=tmp_path)
    assert result.exit_code == 0, result.output


def test_a_job_file_sets_them_under_run_in_a_job_and_by_flat_key(example_plugin, clips, tmp_path):
    clip = clips / "pattern.mp4"
    path = tint_job_file(tmp_path / "jobs.toml", clip, run="tint-verbose = true\n[run.tint]\namount = 0.25\n")
    (shared,) = plan_batch(path).edits
    assert shared.config.plugin_options("tint") == tint_options(amount=0.25, verbose=True)

    tint_job_file(path, clip, run="[run.tint]\namount = 0.25\n", job="tint = { amount = 0.75 }\n")
    (own,) = plan_batch(path).edits
    assert own.config.plugin_options("tint") == tint_options(amount=0.75)  # the job's own over [run]'s

    tint_job_file(path, clip, job="tint = { amount = 2 }\n")
    result = vedit("batch", path, "--dry-run", cwd=tmp_path)
    assert result.exit_code == 4
    line = one_error_line(result)
    assert line.startswith(f"vedit: error: {path}: job 1 ('one'): ") and line.endswith(
        "option 'amount' must be between 0 and 1, got 2"
    ), line


def test_the_output_changing_option_reruns_a_batch_edit_and_the_other_does_not(example_plugin, clips, tmp_path):
    clip = clips / "pattern.mp4"
    path = tint_job_file(tmp_path / "jobs.toml", clip, run="[run.tint]\namount = 0.25\n")
    done = vedit("batch", path, "--quiet", cwd=tmp_path)
    assert done.exit_code == 0, done.output
    (edit,) = plan_batch(path).edits
    assert edit.status == "skipped"  # what the batch wrote is up to date
    assert edit.settings["tint_amount"] == 0.25 and "tint_verbose" not in edit.settings

    tint_job_file(path, clip, run="[run.tint]\namount = 0.25\nverbose = true\n")
    assert [e.status for e in plan_batch(path).edits] == ["skipped"]
    dry = vedit("batch", path, "--dry-run", cwd=tmp_path)
    assert "1 edits: 0 to run, 1 up to date, 0 failing" in " ".join(dry.stdout.split())

    tint_job_file(path, clip, run="[run.tint]\namount = 0.5\n")  # the default: out of the digest, which changes
    assert [e.status for e in plan_batch(path).edits] == ["todo"]
    tint_job_file(path, clip, run="[run.tint]\namount = 0.75\n")
    assert [e.status for e in plan_batch(path).edits] == ["todo"]
    dry = vedit("batch", path, "--dry-run", cwd=tmp_path)
    assert "1 edits: 1 to run, 0 up to date, 0 failing" in " ".join(dry.stdout.split())


def test_the_python_api_hands_them_to_the_editor_by_table_and_by_keyword(example_plugin, clip, tmp_path):
    from vedit.model.loading import load_model

    common = {"prompt": "x", "size": "64x48", "max_frames": 4, "propagator": "none"}
    sd = load_model("tiny", device="cpu", dtype="fp32")
    edit(clip, tmp_path / "plain.mp4", editor="reconstruct", sd=sd, **common)
    with pytest.warns(UserWarning, match=r"^tint: amount 0 on 4 frames$"):
        edit(clip, tmp_path / "zero.mp4", editor="tint", tint_amount=0, tint_verbose=True, sd=sd, **common)
    with pytest.warns(UserWarning, match=r"^tint: amount 0\.9 on 4 frames$"):
        options = {"tint": {"amount": 0.9, "verbose": True}}
        edit(clip, tmp_path / "tinted.mp4", editor="tint", options=options, sd=sd, **common)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        edit(clip, tmp_path / "default.mp4", editor="tint", sd=sd, **common)
    assert not [w for w in caught if str(w.message).startswith("tint:")]  # verbose is off by default

    plain, zero, tinted, default = (
        FrameReader(tmp_path / f"{name}.mp4").read_all().astype(int) for name in ("plain", "zero", "tinted", "default")
    )
    assert np.array_equal(zero, plain)  # amount 0 shifts nothing: the VAE's reconstruction
    assert np.abs(tinted - plain).mean() > 5 and np.abs(tinted - default).mean() > 1  # 0.9 is not 0.5 either


def test_an_editor_without_source_latents_under_tokenflow_is_one_line_naming_the_fix(example_plugin, clip, tmp_path):
    out = tmp_path / "o.mp4"
    args = ["--model", "tiny", "--size", "64x48", "--max-frames", "4"]
    result = vedit("run", clip, "-p", "x", "-o", out, "--editor", "tint", "--quiet", *args, cwd=tmp_path)
    assert result.exit_code == 4, result.output
    assert one_error_line(result) == (
        "vedit: error: propagator 'tokenflow' needs the source clip's latents at every step, which editor 'tint' "
        "does not provide; use --propagator none with it"
    )
    assert not out.exists()

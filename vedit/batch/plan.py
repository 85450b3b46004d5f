"""The batch plan: a job file expanded into one :class:`PlannedEdit` per (clip, prompt, seed), checked as
``vedit run`` checks before any work, grouped into :class:`InversionGroup` values (edits that share one
inversion), with the UNet forwards each will make. What is up to date is marked ``skipped``: a sidecar JSON
beside each output records the settings digest it was made with. :func:`plan_batch` makes a :class:`Plan`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cache.keys import keyed_options
from ..config import RunConfig, path_and_suffix
from ..errors import ConfigError, OutputError, PluginError, VeditError
from ..report import SilentReporter
from .jobfile import (  # noqa: F401  (SIDECAR_SUFFIX and sidecar_path: the records' names are given here too)
    SIDECAR_SUFFIX,
    JobFile,
    JobFileError,
    MultiLineError,
    absolute_path,
    job_label,
    read_job_file,
    sidecar_path,
)

SIDECAR_FORMAT = "vedit-batch-output/1"


class OutputsRefused(MultiLineError, OutputError):
    """Outputs of a plan that exist and that vedit did not write, without ``overwrite``; one line each."""


def prompt_slug(prompt: str, limit: int = 40) -> str:
    """A file-name-safe short form of a prompt: "A watercolor, 1900s!" → "a-watercolor-1900s"."""
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    if len(slug) > limit:
        cut = slug[:limit]
        slug = cut.rsplit("-", 1)[0] if "-" in cut[limit // 2 :] else cut
    return slug or "prompt"


def _identity(path: str | os.PathLike) -> dict[str, Any]:
    """What says a file (or a folder of frames) changed: its absolute path, size and modification
    time in nanoseconds; for a folder, the count, total size and latest modification of its files."""
    path = Path(path)
    try:
        if path.is_dir():
            files = [p for p in sorted(path.iterdir()) if p.is_file()]
            stats = [p.stat() for p in files]
            return {"path": str(path.resolve()), "files": len(files), "size": sum(s.st_size for s in stats),
                    "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}  # fmt: skip
        stat = path.stat()
        return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    except OSError:
        return {"path": str(path), "missing": True}


def settings_of(config: RunConfig, input: Path) -> dict[str, Any]:
    """Everything an output depends on: the options that change the frames written
    (:func:`vedit.cache.keys.keyed_options`) and the identity of the input and of any file an option
    names (keyframe schedule, inversion file)."""
    settings, paths = keyed_options(config, latents=False)
    built = _built(config.model)
    if built is not None:
        # Before the weights' seed was part of the spec, a built model's weights came from the
        # edit's seed: the weights' seed is written only where it differs from the edit's, so the
        # records of outputs that would come out the same keep their digest.
        settings["model"] = built.architecture
        if built.seed != config.seed:
            settings["model_seed"] = built.seed
    settings["input"] = _identity(input)
    for key in sorted(paths):
        value = settings.get(key)
        if isinstance(value, tuple):  # a list of files, each maybe with a suffix (style.safetensors:0.8)
            settings[f"{key}_file"] = [_identity(path_and_suffix(item)[0]) for item in value]
        elif value:
            settings[f"{key}_file"] = _identity(value)
    return settings


def digest_of(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def read_sidecar(output: str | os.PathLike) -> dict[str, Any] | None:
    try:
        data = json.loads(sidecar_path(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == SIDECAR_FORMAT else None


def up_to_date(output: Path, digest: str) -> bool:
    """The output exists and its sidecar records this settings digest."""
    if not output.exists():
        return False
    record = read_sidecar(output)
    return record is not None and record.get("digest") == digest


def _written_or_recorded(output: Path) -> bool:
    """Whether vedit wrote ``output``: its signature is in it, or a batch's record is beside it
    (outputs written before vedit signed them have one too)."""
    from ..io.files import written_by_vedit

    return read_sidecar(output) is not None or written_by_vedit(output)


def write_json_atomically(path: Path, data: Any) -> None:
    from ..io.files import write_atomically

    write_atomically(path, (json.dumps(data, indent=2, default=str) + "\n").encode("utf-8"))


def _built(model: str) -> Any:
    """The :class:`~vedit.model.builders.BuiltSpec` of a model built in code, else None (a malformed spec
    too: the checks before the plan say what is wrong with it)."""
    from ..model.builders import built_spec

    try:
        return built_spec(model)
    except ConfigError:
        return None


def model_key(config: RunConfig) -> tuple:
    """Edits with equal keys can share one loaded model (whatever their seeds: a built model's
    weights come from its spec, ``tiny@3``, and ``tiny`` is ``tiny@0``)."""
    built = _built(config.model)
    model = built.name if built is not None else config.model
    return (model, config.revision, config.model_config, config.device, config.dtype, config.lora, config.embedding)


def inversion_key(config: RunConfig, input: Path) -> tuple:
    """Edits with equal keys share one inversion (a superset of what the inversion cache keys on)."""
    return (
        str(input), *model_key(config), config.size, config.frames, config.max_frames, config.fps, config.allow_short,
        config.keep_timestamps, config.source_prompt, config.steps, config.inversion_steps, config.no_cache,
        config.cache_dir,
    )  # fmt: skip


@dataclass
class PlannedEdit:
    """One output to make: a clip, a prompt and a seed, with every option resolved."""

    index: int  # 1-based position in the plan
    job: int
    job_name: str | None
    input: Path
    prompt: str
    prompt_index: int
    seed: int
    output: Path
    config: RunConfig
    digest: str
    settings: dict[str, Any]
    frames: int = 0  # frames that will be edited (0 when the clip could not be opened)
    forwards: dict[str, int] = field(default_factory=dict)  # planned UNet image-forwards, inversion excluded
    group: int | None = None  # the InversionGroup's number, None without inversion
    replaces: bool = False  # its output exists and vedit did not write it
    # Planned: "todo", "skipped" (up to date), "failed" (the clip cannot be opened) or "refused" (it
    # would replace a file vedit did not write, without overwrite). After the run: "done", "failed"
    # or "not run" (interrupted).
    status: str = "todo"
    reason: str = ""
    result: dict[str, Any] = field(default_factory=dict)  # seconds, frames, inversion, forwards, ... once run

    @property
    def label(self) -> str:
        return job_label(self.job, self.job_name)

    def record(self) -> dict[str, Any]:
        """The summary's entry for this edit."""
        return {
            "index": self.index, "job": self.job, "job_name": self.job_name, "input": str(self.input),
            "prompt": self.prompt, "seed": self.seed, "output": str(self.output),
            "sidecar": str(sidecar_path(self.output)), "group": self.group, "status": self.status,
            "reason": self.reason, "frames": self.result.get("frames", self.frames),
            "seconds": self.result.get("seconds"), "inversion": self.result.get("inversion"),
            "forwards": self.result.get("forwards"), "planned_forwards": self.forwards,
            "attempts": self.result.get("attempts"), "worker": self.result.get("worker"),
            "warnings": self.result.get("warnings", []), "digest": self.digest,
        }  # fmt: skip


@dataclass
class InversionGroup:
    """Edits of one clip that share one inversion: it is computed once, before them."""

    number: int
    input: Path
    config: RunConfig  # the first edit's options
    edits: list[PlannedEdit]
    forwards: int  # UNet image-forwards of computing it
    # "todo"; after the run: "computed" or "cached" (how its unit had it); "in edit"
    # when a single edit was left to do and inverted for itself; "failed", "skipped" (no edit to
    # do) or "not run".
    status: str = "todo"
    reason: str = ""
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def todo(self) -> list[PlannedEdit]:
        return [e for e in self.edits if e.status == "todo"]

    @property
    def own_unit(self) -> bool:
        """Whether the inversion runs as a unit of its own (two or more edits wait for it)."""
        return len(self.todo) > 1

    def record(self) -> dict[str, Any]:
        return {
            "group": self.number, "input": str(self.input), "source_prompt": self.config.source_prompt,
            "model": self.config.model, "edits": [e.index for e in self.edits], "status": self.status,
            "reason": self.reason, "seconds": self.result.get("seconds"), "forwards": self.result.get("forwards"),
            "worker": self.result.get("worker"), "attempts": self.result.get("attempts"),
            "shared_as": self.result.get("shared_as"),
        }  # fmt: skip


@dataclass
class Plan:
    job_file: Path
    edits: list[PlannedEdit]
    groups: list[InversionGroup]
    warnings: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for e in self.edits if e.status == status)

    @property
    def todo(self) -> list[PlannedEdit]:
        return [e for e in self.edits if e.status == "todo"]

    def check_outputs(self) -> None:
        """Raise :class:`OutputsRefused`, a line per edit, when any would replace a file that vedit
        did not write (an edit with ``overwrite`` replaces it)."""
        refused = [f"{self.job_file}: {e.label}: {e.reason}" for e in self.edits if e.status == "refused"]
        if refused:
            raise OutputsRefused(refused)

    @property
    def inversions_to_compute(self) -> list[InversionGroup]:
        """Groups with at least one edit to do: each computes its inversion once (or finds it cached)."""
        return [g for g in self.groups if g.todo]

    def planned_forwards(self) -> dict[str, int]:
        """UNet image-forwards of the edits to do, by kind, with one inversion per group to compute
        (an inversion already in the cache costs none; that is only known when it runs)."""
        total: dict[str, int] = {}
        for group in self.inversions_to_compute:
            total["inversion"] = total.get("inversion", 0) + group.forwards
        for e in self.todo:
            for kind, count in e.forwards.items():
                total[kind] = total.get(kind, 0) + count
        return total


class Collect(SilentReporter):
    """A reporter that keeps warnings and shows nothing."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, text: str) -> None:
        self.warnings.append(text)


def _check_config(config: RunConfig, device_here: bool) -> RunConfig:
    """The options the plan-time checks see: on Ray the workers' devices decide, so a GPU device
    and dtype are checked as 'auto' on a driver that has none."""
    if device_here or config.device == "cpu":
        return config
    return config.replace(device="auto", dtype="auto" if config.dtype == "fp16" else config.dtype)


def plan_batch(
    job_file: JobFile | str | os.PathLike,
    *,
    force: bool = False,
    config_path: str | os.PathLike | None = None,
    device_here: bool = True,
    overwrite: bool = False,
) -> Plan:
    """Expand a job file into the edits to make, checked before any heavy work.

    Option mistakes that show only with the clip at hand (an unknown plugin, a bad combination, a
    frame range the clip does not have) are job-file errors: :class:`JobFileError` lists them all
    and nothing runs. A clip that cannot be read makes its edits ``failed`` in the plan; the others
    still run. With ``force`` no output counts as up to date. ``device_here``: the edits run on this
    machine's devices (False for Ray, whose workers may have GPUs this machine lacks). An edit whose
    output exists and was not written by vedit is ``refused`` (:meth:`Plan.check_outputs`), unless
    ``overwrite`` (or its own ``overwrite`` option) says to replace it.
    """
    from ..cache.files import cache_root
    from ..io.files import VIDEO_EXTENSIONS, check_replaceable, unwritable_suffix
    from ..pipeline.plan import planned_forwards
    from ..pipeline.preflight import preflight

    if not isinstance(job_file, JobFile):
        job_file = read_job_file(job_file, config_path=config_path)
    where = str(job_file.path)
    errors: list[str] = []
    warnings: list[str] = []
    edits: list[PlannedEdit] = []
    seen_outputs: dict[Path, PlannedEdit] = {}
    inputs = {i for job in job_file.jobs for i in job.inputs}
    base = job_file.path.resolve().parent
    for job in job_file.jobs:
        for input in job.inputs:
            for prompt_index, prompt in enumerate(job.prompts, start=1):
                for seed in job.seeds:
                    config = RunConfig(**{**job.values, "prompt": prompt, "seed": seed})
                    config = config.replace(
                        cache_dir=str(cache_root(config.cache_dir).resolve()),
                        engine_cache=config.engine_cache and absolute_path(config.engine_cache, Path.cwd()),
                        overwrite=config.overwrite or overwrite,
                    )
                    fields = {
                        "clip": input.stem if input.suffix else input.name, "job": job.name or str(job.number),
                        "prompt_index": prompt_index, "prompt_slug": prompt_slug(prompt), "seed": seed,
                        "editor": config.editor,
                    }  # fmt: skip
                    try:
                        text = job.output.format(**fields)
                    except (ValueError, KeyError, IndexError) as error:
                        errors.append(
                            f"{where}: {job.label}: output pattern {job.output!r} cannot be filled in ({error})"
                        )
                        continue
                    output = Path(absolute_path(text, base))
                    suffix = output.suffix.lower()
                    if suffix and suffix not in VIDEO_EXTENSIONS:
                        errors.append(f"{where}: {job.label}: output {text!r}: {unwritable_suffix(suffix)}")
                        continue
                    if output in inputs:
                        errors.append(f"{where}: {job.label}: output {text!r} is an input of this batch")
                        continue
                    edit = PlannedEdit(
                        index=len(edits) + 1, job=job.number, job_name=job.name, input=input, prompt=prompt,
                        prompt_index=prompt_index, seed=seed, output=output, config=config, digest="", settings={},
                    )  # fmt: skip
                    other = seen_outputs.get(output)
                    if other is not None:
                        same = "the same job" if other.job == job.number else other.label
                        errors.append(
                            f"{where}: {job.label}: output {text!r} is also written by {same} "
                            f"({other.input.name}, {other.prompt!r}, seed {other.seed}): "
                            "add {clip}, {prompt_slug} or {seed} to the output pattern"
                        )
                        continue
                    seen_outputs[output] = edit
                    edit.settings = settings_of(config, input)
                    edit.digest = digest_of(edit.settings)
                    edits.append(edit)

    # The checks `vedit run` makes before loading a model, once per edit.
    groups: dict[tuple, InversionGroup] = {}
    for edit in edits:
        reporter = Collect()
        try:
            checked = preflight(edit.input, _check_config(edit.config, device_here), reporter)
        except (ConfigError, PluginError) as error:
            line = f"{where}: {edit.label}: {edit.input.name}: {error}"
            if line not in errors:  # the same mistake once per job and clip, not once per prompt
                errors.append(line)
            continue
        except VeditError as error:  # the clip (or an output folder) is the problem: this edit only
            edit.status, edit.reason = "failed", str(error)
            continue
        for text in reporter.warnings:
            if text not in warnings:
                warnings.append(text)
        edit.frames = len(checked.clip.reader)
        edit.forwards = planned_forwards(edit.config, edit.frames, checked.editor, checked.propagator,
                                         checked.steps_run, inverting=False)  # fmt: skip
        if checked.editor.needs_inversion and not edit.config.inversion:
            key = inversion_key(edit.config, edit.input)
            group = groups.get(key)
            if group is None:
                forwards = edit.frames * edit.config.inversion_steps
                group = groups[key] = InversionGroup(len(groups) + 1, edit.input, edit.config, [], forwards)
            group.edits.append(edit)
            edit.group = group.number
        if not force and up_to_date(edit.output, edit.digest):
            edit.status, edit.reason = "skipped", "up to date"
        elif edit.output.exists():
            try:
                check_replaceable(edit.output, False, _written_or_recorded)
            except OutputError as error:
                edit.replaces = True
                if not edit.config.overwrite:
                    edit.status, edit.reason = "refused", str(error)
    if errors:
        raise JobFileError(errors)
    ordered = list(groups.values())
    for group in ordered:
        if not group.todo:
            group.status = "skipped"
    return Plan(job_file=job_file.path, edits=edits, groups=ordered, warnings=warnings)

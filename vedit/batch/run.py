"""``vedit batch``: many clips × many prompts from one job file, planned, skipped when up to date,
run in this process, in a local pool of worker processes (one per GPU), or as Ray tasks.

The stages are plain values, each usable alone:

* :func:`read_job_file` parses and validates a job file as a whole (every error names the job and
  the key; nothing runs while one remains) into :class:`Job` values;
* :func:`plan_batch` expands them into a :class:`Plan`: one :class:`PlannedEdit` per (clip, prompt,
  seed), grouped into :class:`InversionGroup` values (edits that share one inversion), with what is
  already up to date marked ``skipped`` (a sidecar JSON beside each output records the settings
  digest it was made with) and the UNet forwards each edit will make;
* :func:`run_batch` runs a plan: units (one inversion per group with two or more edits to do, then
  its edits) go to a backend — this process (``workers=1``), a pool of spawned processes, or Ray —
  and every result lands in the plan and in the summary JSON.

A unit never raises into the scheduler: a :class:`~vedit.errors.VeditError` (bad clip, bad option
combination, unwritable output) or any other exception is the unit's ``failed`` outcome, reported
once and never retried. Only a worker process that dies (killed, out of host memory, a crash in a
native library) has its unit retried, up to ``retries`` times, on a fresh worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import glob
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import string
import tempfile
import time
import unicodedata
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..config import CONFIG_FILENAME, RunConfig, option_label, option_value, read_config_file, read_toml, validate
from ..errors import ConfigError, OutputError, PluginError, VeditError
from ..report import SilentReporter

JOB_FORMAT = "vedit-batch/1"
SIDECAR_FORMAT = "vedit-batch-output/1"
SUMMARY_FORMAT = "vedit-batch-summary/1"
SIDECAR_SUFFIX = ".vedit.json"
DEFAULT_OUTPUT = "{clip}-{prompt_slug}-{seed}.mp4"
DEFAULT_RETRIES = 2
FAILED_EXIT_CODE = 8  # some edits of a batch failed (the others were done)

# Keys of a [[job]] table that are not run options.
JOB_KEYS = ("name", "input", "prompts", "seeds", "output")
BATCH_KEYS = ("output",)
# Output pattern fields.
PATTERN_FIELDS = ("clip", "job", "prompt_index", "prompt_slug", "seed", "editor")
# Run options that are paths: relative values written in a job file are relative to its folder.
PATH_OPTIONS = ("keyframes", "inversion", "cache_dir", "engine_cache")
# Options that may name a local folder or a hub id: a relative value is a path when it exists.
FOLDER_OR_ID_OPTIONS = ("model", "clip")
# Options that do not change the frames written: left out of the settings digest, so changing
# them does not make an output out of date.
NOT_IN_DIGEST = frozenset({
    "engine", "engine_cache", "nn_backend", "batch_size", "cache_dir", "no_cache", "cache_max_gb",
    "checkpoint_every", "overwrite",
})  # fmt: skip

# Testing hook: "MARKER:TEXT" makes the worker process that writes an output whose path contains
# TEXT kill itself (SIGKILL) once, while writing, if MARKER does not exist yet (it is created
# first). It acts in pool and Ray worker processes only, never in the process that runs the batch.
KILL_ONCE_ENV = "VEDIT_BATCH_KILL_ONCE"


class _Lines:
    """An error of one or more lines: ``errors`` holds each; the message is the first."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{errors[0]}{more}")


class JobFileError(_Lines, ConfigError):
    """A job file with one or more mistakes; ``errors`` holds one line each, in file order."""


class OutputsRefused(_Lines, OutputError):
    """Outputs of a plan that exist and that vedit did not write, without ``overwrite``; one line each."""


# --------------------------------------------------------------------------------------------
# The job file


@dataclass
class Job:
    """One ``[[job]]`` table, validated: its run options merged over the shared defaults."""

    number: int  # 1-based position in the file
    name: str | None
    inputs: list[Path]  # globs expanded, absolute
    prompts: list[str]
    seeds: list[int]
    output: str  # the output pattern, absolute or relative to the job file's folder
    values: dict[str, Any]  # run options (RunConfig field names), prompt and seed left out

    @property
    def label(self) -> str:
        return f"job {self.number}" + (f" ({self.name!r})" if self.name else "")


@dataclass
class JobFile:
    path: Path
    jobs: list[Job]


def _job_label(number: int, name: Any) -> str:
    return f"job {number}" + (f" ({name!r})" if isinstance(name, str) and name else "")


def _absolute(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _resolve_paths(values: dict[str, Any], written: Iterable[str], base: Path, cwd: Path) -> dict[str, Any]:
    """Path options made absolute: those ``written`` in the job file against its folder, the
    rest (defaults, vedit.toml) against the working directory, so that every worker reads the same
    files whatever its own working directory."""
    from ..model.models import is_built_in

    out = dict(values)
    written = set(written)
    for key in PATH_OPTIONS:
        if out.get(key):
            out[key] = _absolute(out[key], base if key in written else cwd)
    for key in FOLDER_OR_ID_OPTIONS:
        value = out.get(key)
        if isinstance(value, str) and value and not (key == "model" and is_built_in(value)):
            candidate = Path(_absolute(value, base if key in written else cwd))
            if candidate.is_dir():
                out[key] = str(candidate)
    return out


def _has_glob(text: str) -> bool:
    return glob.has_magic(text)


def sidecar_path(output: str | os.PathLike) -> Path:
    """Where the record of how ``output`` was made lives: ``out.mp4`` → ``out.mp4.vedit.json``,
    a frames folder ``frames/`` → ``frames.vedit.json``."""
    text = os.fspath(output).rstrip("/" + os.sep)
    return Path(text + SIDECAR_SUFFIX)


def _expand_inputs(patterns: list[str], base: Path, label: str, where: str, errors: list[str]) -> list[Path]:
    found: list[Path] = []
    for pattern in patterns:
        full = _absolute(pattern, base)
        if _has_glob(pattern):
            # A match that a batch wrote (it has a sidecar) is an output, not a clip to edit.
            matches = [Path(m) for m in sorted(glob.glob(full)) if not sidecar_path(m).exists()]
            matches = [m for m in matches if not m.name.endswith(SIDECAR_SUFFIX)]
        else:
            matches = [Path(full)] if Path(full).exists() else []
        if not matches:
            what = "matches no file" if _has_glob(pattern) else "does not exist"
            errors.append(f"{where}: {label}: input {pattern!r} {what}")
        for match in matches:
            if match not in found:
                found.append(match)
    return found


def _validate_each(values: dict[str, Any], origin: str, errors: list[str], extra: Iterable[str] = ()) -> dict[str, Any]:
    """``validate`` key by key, so that every mistake of a table is reported, not only the first;
    an unknown key gets the nearest known one as a hint."""
    import difflib

    from ..config import field_types

    known = {k.replace("_", "-") for k in field_types()}
    extra = tuple(extra)
    clean: dict[str, Any] = {}
    for key, value in values.items():
        if key.replace("_", "-") not in known:
            close = difflib.get_close_matches(key.replace("_", "-"), [*sorted(known), *extra], n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            takes = (f"a job takes {', '.join(extra)} and any option of 'vedit run'" if extra
                     else "any option of 'vedit run', named like its flag")
            errors.append(f"{origin}: unknown option {key!r} ({hint}{takes})")
            continue
        try:
            clean.update(validate({key: value}, origin))
        except ConfigError as error:
            errors.append(str(error))
    return clean


def _strings(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _pattern_fields(pattern: str) -> list[str]:
    """The field names of an output pattern (ValueError for a malformed one)."""
    names = []
    for _, name, _spec, _conversion in string.Formatter().parse(pattern):
        if name is not None:
            names.append(name)
    return names


def read_job_file(path: str | os.PathLike, *, config_path: str | os.PathLike | None = None, cwd: Path | None = None) -> JobFile:
    """Parse and validate a whole job file; raise :class:`JobFileError` listing every mistake.

    Shared defaults, lowest first: :class:`RunConfig`'s, ``vedit.toml`` (``config_path``, or the
    working directory's), the job file's ``[run]`` table, then each job's own keys.
    """
    path = Path(path)
    cwd = Path(cwd or Path.cwd()).resolve()
    where = str(path)
    data = read_toml(path, "job file")
    base = path.resolve().parent
    errors: list[str] = []

    unknown = sorted(set(data) - {"run", "batch", "job"})
    for key in unknown:
        hint = "write each job as [[job]]" if key in ("jobs", "runs") else "a job file has [run], [batch] and [[job]] tables"
        errors.append(f"{where}: unknown table or key {key!r} ({hint})")

    defaults: dict[str, Any] = {}
    if config_path is not None:
        defaults.update(read_config_file(config_path))
    elif (cwd / CONFIG_FILENAME).is_file():
        defaults.update(read_config_file(cwd / CONFIG_FILENAME))
    shared: dict[str, Any] = {}
    run = data.get("run", {})
    if not isinstance(run, dict):
        errors.append(f"{where}: 'run' must be a table ([run])")
    else:
        shared = _validate_each(run, f"{where}: [run]", errors)
    default_output = DEFAULT_OUTPUT
    batch = data.get("batch", {})
    if not isinstance(batch, dict):
        errors.append(f"{where}: 'batch' must be a table ([batch])")
    else:
        for key in sorted(set(batch) - set(BATCH_KEYS)):
            errors.append(f"{where}: [batch]: unknown key {key!r} (known: {', '.join(BATCH_KEYS)})")
        if "output" in batch:
            if isinstance(batch["output"], str) and batch["output"]:
                default_output = batch["output"]
            else:
                errors.append(f"{where}: [batch]: 'output' must be a non-empty string, got {batch['output']!r}")

    tables = data.get("job", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        errors.append(f"{where}: 'job' must be a list of tables: write each job as [[job]]")
        tables = []
    if not tables and not errors:
        errors.append(f"{where}: no jobs: add at least one [[job]] table with input and prompt")

    jobs: list[Job] = []
    for number, table in enumerate(tables, start=1):
        label = _job_label(number, table.get("name"))
        count = len(errors)
        name = table.get("name")
        if name is not None and not (isinstance(name, str) and name):
            errors.append(f"{where}: {label}: 'name' must be a non-empty string, got {name!r}")
            name = None
        options = {k: v for k, v in table.items() if k not in JOB_KEYS}
        own = _validate_each(options, f"{where}: {label}", errors, extra=("input", "prompt", "prompts", "seed", "seeds", "name", "output"))
        values = {**defaults, **shared, **own}
        written = set(shared) | set(own)

        inputs: list[Path] = []
        patterns = _strings(table.get("input"))
        if "input" not in table:
            errors.append(f"{where}: {label}: no 'input': give a clip, a folder of frames or a glob such as 'clips/*.mp4'")
        elif patterns is None:
            errors.append(f"{where}: {label}: 'input' must be a path or glob, or a list of them, got {table['input']!r}")
        else:
            inputs = _expand_inputs(patterns, base, label, where, errors)

        prompts: list[str] = []
        if "prompts" in table and "prompt" in own:
            errors.append(f"{where}: {label}: give 'prompt' or 'prompts', not both")
        elif "prompts" in table:
            given = table["prompts"]
            if isinstance(given, list) and given and all(isinstance(p, str) and p.strip() for p in given):
                prompts = list(given)
            else:
                errors.append(f"{where}: {label}: 'prompts' must be a non-empty list of non-empty strings, got {given!r}")
        elif values.get("prompt"):
            prompts = [values["prompt"]]
        else:
            errors.append(f"{where}: {label}: no target prompt: give 'prompt' or 'prompts' (or 'prompt' under [run])")

        seeds: list[int] = []
        if "seeds" in table and "seed" in own:
            errors.append(f"{where}: {label}: give 'seed' or 'seeds', not both")
        elif "seeds" in table:
            given = table["seeds"]
            ok = isinstance(given, list) and given and all(isinstance(s, int) and not isinstance(s, bool) for s in given)
            if ok:
                try:
                    seeds = [validate({"seed": s}, f"{where}: {label}")["seed"] for s in given]
                except ConfigError as error:
                    errors.append(str(error).replace("option 'seed'", "'seeds'"))
            else:
                errors.append(f"{where}: {label}: 'seeds' must be a non-empty list of whole numbers, got {given!r}")
        else:
            seeds = [values.get("seed", RunConfig.seed)]

        output = table.get("output", default_output)
        if not (isinstance(output, str) and output):
            errors.append(f"{where}: {label}: 'output' must be a non-empty string (a pattern such as {DEFAULT_OUTPUT!r}), got {output!r}")
        else:
            try:
                fields = _pattern_fields(output)
            except ValueError as error:
                errors.append(f"{where}: {label}: output pattern {output!r} is malformed ({error}); write a literal brace as {{{{ or }}}}")
            else:
                for field_name in fields:
                    if field_name not in PATTERN_FIELDS:
                        errors.append(
                            f"{where}: {label}: output pattern {output!r} has unknown field {{{field_name}}} "
                            f"(known: {', '.join('{' + f + '}' for f in PATTERN_FIELDS)})"
                        )
        if len(errors) > count:
            continue
        values.pop("prompt", None)
        values.pop("seed", None)
        values = _resolve_paths(values, written, base, cwd)
        jobs.append(Job(number, name, inputs, prompts, seeds, output, values))
    if errors:
        raise JobFileError(errors)
    return JobFile(path=path, jobs=jobs)


# --------------------------------------------------------------------------------------------
# The plan


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
    """Everything an output depends on: the run options (less :data:`NOT_IN_DIGEST`) and the
    identity of the input and of any file an option names (keyframe schedule, inversion file)."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_IN_DIGEST}
    built = _built(config.model)
    if built is not None:
        # Before the weights' seed was part of the spec, a built model's weights came from the
        # edit's seed: the weights' seed is written only where it differs from the edit's, so the
        # records of outputs that would come out the same keep their digest.
        settings["model"] = built.architecture
        if built.seed != config.seed:
            settings["model_seed"] = built.seed
    settings["input"] = _identity(input)
    for key in ("keyframes", "inversion"):
        if settings.get(key):
            settings[f"{key}_file"] = _identity(settings[key])
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
    from ..io.video import written_by_vedit

    return read_sidecar(output) is not None or written_by_vedit(output)


def _write_json_atomically(path: Path, data: Any) -> None:
    from ..io.video import write_atomically

    write_atomically(path, (json.dumps(data, indent=2, default=str) + "\n").encode("utf-8"))


def _built(model: str) -> Any:
    """The :class:`~vedit.model.models.BuiltSpec` of a model built in code, else None (a malformed spec
    too: the checks before the plan say what is wrong with it)."""
    from ..model.models import built_spec

    try:
        return built_spec(model)
    except ConfigError:
        return None


def model_key(config: RunConfig) -> tuple:
    """Edits with equal keys can share one loaded model (whatever their seeds: a built model's
    weights come from its spec, ``tiny@3``, and ``tiny`` is ``tiny@0``)."""
    built = _built(config.model)
    return (built.name if built is not None else config.model, config.revision, config.device, config.dtype)


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
        return _job_label(self.job, self.job_name)

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


class _Collect(SilentReporter):
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
    job_file: JobFile | str | os.PathLike, *, force: bool = False, config_path: str | os.PathLike | None = None,
    device_here: bool = True, overwrite: bool = False,
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
    from ..method.inversion import cache_root
    from ..pipeline.stages import preflight, planned_forwards
    from ..io.video import VIDEO_EXTENSIONS, check_replaceable, unwritable_suffix

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
                        engine_cache=config.engine_cache and _absolute(config.engine_cache, Path.cwd()),
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
                        errors.append(f"{where}: {job.label}: output pattern {job.output!r} cannot be filled in ({error})")
                        continue
                    output = Path(_absolute(text, base))
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
        reporter = _Collect()
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
        edit.forwards = planned_forwards(edit.config, edit.frames, checked.editor, checked.propagator, checked.steps_run,
                                         inverting=False)  # fmt: skip
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


# --------------------------------------------------------------------------------------------
# Units: what a worker runs


@dataclass
class Unit:
    """One piece of work for a worker: an inversion (``kind="invert"``) or an edit. Picklable."""

    kind: str
    number: int  # the group's number (invert) or the edit's index (edit)
    input: Path
    config: RunConfig
    output: Path | None = None
    digest: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    trajectory: dict[str, Any] | None = None  # for an edit: the shared inversion, {"key", "path", "cached"}
    fault: str | None = None  # the testing hook's marker file
    scratch: str | None = None  # the batch's folder for trajectories made without the cache
    attempts: int = 0  # started so far

    @property
    def uid(self) -> str:
        return f"{self.kind}:{self.number}"

    @property
    def model_key(self) -> tuple:
        return model_key(self.config)


@dataclass
class Outcome:
    """What a unit gave. ``status`` is "done" or "failed" ("died" when its worker process died)."""

    status: str
    reason: str = ""
    seconds: float = 0.0
    frames: int = 0
    inversion: str = ""  # for an edit: how it had its trajectory; for an inversion: "computed" or "cached"
    forwards: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    worker: str = ""
    model_loaded: bool = False  # this unit loaded the model (the worker had another or none)
    trajectory: dict[str, Any] | None = None  # an inversion's: {"key", "path", "cached"}


_MODEL: list[Any] = [None, None]  # (key, model): the one model a worker process holds


def _load(config: RunConfig) -> tuple[Any, bool]:
    """The model for ``config``, loaded unless this process holds it already (one at a time)."""
    import gc

    from ..model.models import load_model

    key = model_key(config)
    if _MODEL[0] == key:
        return _MODEL[1], False
    _MODEL[0] = _MODEL[1] = None
    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    model = load_model(config.model, device=config.device, dtype=config.dtype, revision=config.revision)
    _MODEL[0], _MODEL[1] = key, model
    return model, True


def release_model() -> None:
    """Let go of the model this process holds for batch units."""
    _MODEL[0] = _MODEL[1] = None


def _scratch(unit: Unit) -> Path:
    """The batch's folder for trajectories made without the cache (made on this machine if it is
    another one than the batch's)."""
    folder = Path(unit.scratch) if unit.scratch else Path(tempfile.gettempdir()) / "vedit-batch"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class _Killing:
    """Wraps a reporter for the testing hook: the process kills itself while writing, once."""

    def __init__(self, inner: Any, marker: str):
        self.inner, self.marker = inner, marker

    def task(self, description: str, total: int | None):
        inner_task = self.inner.task(description, total)
        marker = self.marker

        class _Task:
            def advance(self, amount: int = 1) -> None:
                inner_task.advance(amount)
                if description == "decode + write":
                    try:
                        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                    except FileExistsError:
                        return
                    os.kill(os.getpid(), signal.SIGKILL)

        return _Task()

    def message(self, text: str) -> None:
        self.inner.message(text)

    def warning(self, text: str) -> None:
        self.inner.warning(text)


def _reason(error: BaseException) -> str:
    if isinstance(error, VeditError):
        return str(error)
    name = type(error).__name__
    if "OutOfMemory" in name or isinstance(error, MemoryError):
        return f"out of memory ({str(error).splitlines()[0][:120] if str(error) else 'allocation failed'})"
    text = (str(error).strip().splitlines() or [""])[0][:200]
    return f"{name}: {text}" if text else name


def _materialize(unit: Unit, fetch: Callable[[], bytes] | None) -> RunConfig:
    """The edit's options, with the group's shared inversion where this process can read it: in
    the cache (the edit finds it there), else in a file it is pointed at. A trajectory this
    process cannot see (another machine wrote it to a cache folder that is not shared) is fetched
    with ``fetch`` (from Ray's object store) and put in this machine's cache."""
    from ..method.inversion import InversionCache
    from ..io.video import write_atomically

    config, info = unit.config, unit.trajectory
    if not info:
        return config
    path = Path(info["path"])
    if not path.exists():
        if fetch is None:
            return config  # the edit inverts for itself
        data = fetch()
        target = InversionCache(config.cache_dir).path(info["key"]) if info.get("cached") else _scratch(unit) / path.name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(target, data)
        except OSError:
            target = _scratch(unit) / path.name
            write_atomically(target, data)
            return config.replace(inversion=str(target))
        path = target
        if info.get("cached"):
            return config
    return config if info.get("cached") else config.replace(inversion=str(path))


def execute(
    unit: Unit, *, reporter: Any = None, worker: str = "", in_worker: bool = False, fetch: Callable[[], bytes] | None = None
) -> Outcome:
    """Run one unit in this process and say how it went; never raises for a failed unit.

    An edit removes its output's sidecar first and writes it after the output is complete (the
    output itself is renamed into place only when whole), so an interrupted or killed edit never
    leaves an output that looks up to date.
    """
    from ..pipeline.stages import edit, invert_clip
    from ..runtime.allocator import configure_allocator

    configure_allocator()  # once per process, before the model loads: a worker process may not have run the CLI
    began = time.perf_counter()
    reporter = reporter if reporter is not None else _Collect()
    if in_worker and unit.fault:
        reporter = _Killing(reporter, unit.fault)
    loaded = False
    try:
        model, loaded = _load(unit.config)
        if unit.kind == "invert":
            config = unit.config
            result = invert_clip(unit.input, None, config, reporter=reporter, sd=model)
            if result.cache_path is not None:
                info = {"key": result.cache_path.stem, "path": str(result.cache_path), "cached": True}
            else:  # without the cache (--no-cache, or it cannot be written): a file of this batch's own
                target = _scratch(unit) / f"group-{unit.number}-{os.getpid()}.safetensors"
                result.trajectory.save(target)
                info = {"key": target.stem, "path": str(target), "cached": False}
            return Outcome(
                "done", seconds=time.perf_counter() - began, frames=result.trajectory.num_frames, inversion=result.how,
                forwards={"inversion": result.trajectory.num_frames * config.inversion_steps} if result.how == "computed" else {},
                warnings=list(result.warnings), worker=worker, model_loaded=loaded, trajectory=info,
            )  # fmt: skip
        assert unit.output is not None
        config = _materialize(unit, fetch)
        sidecar = sidecar_path(unit.output)
        if read_sidecar(unit.output) is not None:  # vedit wrote the output, maybe before it signed outputs
            config = config.replace(overwrite=True)
        sidecar.unlink(missing_ok=True)
        unit.output.parent.mkdir(parents=True, exist_ok=True)
        result = edit(unit.input, unit.output, config, reporter=reporter, sd=model)
        record = {
            "format": SIDECAR_FORMAT, "digest": unit.digest, "settings": unit.settings, "output": str(unit.output),
            "written": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "frames": result.frames,
            "seconds": round(result.seconds, 3), "model": result.model, "inversion": result.inversion,
        }  # fmt: skip
        _write_json_atomically(sidecar, record)
        return Outcome(
            "done", seconds=time.perf_counter() - began, frames=result.frames, inversion=result.inversion,
            forwards=dict(result.forwards), warnings=list(result.warnings), worker=worker, model_loaded=loaded,
        )  # fmt: skip
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001 — every failure is this unit's outcome, reported once
        return Outcome("failed", reason=_reason(error), seconds=time.perf_counter() - began, worker=worker,
                       model_loaded=loaded)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Scheduling


class _Schedule:
    """Which unit is ready: inversions first, a group's edits once its inversion is done."""

    def __init__(self, plan: Plan, retries: int, fault: tuple[str, str] | None, scratch: str | None = None):
        self.plan, self.retries = plan, retries
        self.ready: deque[Unit] = deque()
        self.waiting: dict[int, list[Unit]] = {}
        self.running: dict[str, Unit] = {}
        self.groups = {g.number: g for g in plan.groups}
        self.edits = {e.index: e for e in plan.edits}
        self.model_loads = 0

        def unit_for(edit: PlannedEdit) -> Unit:
            hook = fault[0] if fault and fault[1] in str(edit.output) else None
            return Unit("edit", edit.index, edit.input, edit.config, edit.output, edit.digest, edit.settings, fault=hook,
                        scratch=scratch)  # fmt: skip

        # Edits of one model together (one load per worker), each group's inversion before its edits.
        by_model: dict[tuple, list[Unit]] = {}
        placed: set[int] = set()
        for edit in plan.edits:
            if edit.status != "todo" or edit.index in placed:
                continue
            group = self.groups.get(edit.group) if edit.group is not None else None
            bucket = by_model.setdefault(model_key(edit.config), [])
            if group is not None and group.own_unit:
                bucket.append(Unit("invert", group.number, group.input, group.config.replace(prompt=None), scratch=scratch))
                self.waiting[group.number] = [unit_for(e) for e in group.todo]
                placed.update(e.index for e in group.todo)
            else:
                if group is not None:
                    group.status = "in edit"
                bucket.append(unit_for(edit))
                placed.add(edit.index)
        for units in by_model.values():
            self.ready.extend(units)

    def pending(self) -> bool:
        return bool(self.ready or self.running or self.waiting)

    def take(self, prefer: tuple | None = None) -> Unit | None:
        """The next ready unit, one of model ``prefer`` when there is one (no reload)."""
        if not self.ready:
            return None
        chosen = next((u for u in self.ready if u.model_key == prefer), None) if prefer is not None else None
        if chosen is None:
            chosen = self.ready[0]
        self.ready.remove(chosen)
        chosen.attempts += 1
        self.running[chosen.uid] = chosen
        return chosen

    def finish(self, unit: Unit, outcome: Outcome) -> list[PlannedEdit | InversionGroup]:
        """Record an outcome; returns what it settled (for the display)."""
        self.running.pop(unit.uid, None)
        if outcome.status == "died":
            if unit.attempts <= self.retries:
                self.ready.appendleft(unit)
                return []
            outcome = dataclasses.replace(
                outcome, status="failed", reason=f"{outcome.reason}; gave up after {unit.attempts} attempts"
            )
        if outcome.model_loaded:
            self.model_loads += 1
        result = {
            "seconds": round(outcome.seconds, 3), "frames": outcome.frames, "inversion": outcome.inversion,
            "forwards": outcome.forwards, "warnings": outcome.warnings, "worker": outcome.worker,
            "attempts": unit.attempts,
        }  # fmt: skip
        if unit.kind == "invert":
            group = self.groups[unit.number]
            group.result = result
            waiting = self.waiting.pop(unit.number, [])
            settled: list[PlannedEdit | InversionGroup] = [group]
            if outcome.status == "done":
                group.status = outcome.inversion  # "computed" or "cached"
                group.result["shared_as"] = "cache" if (outcome.trajectory or {}).get("cached") else "file"
                for edit_unit in waiting:
                    edit_unit.trajectory = outcome.trajectory
                self.ready.extendleft(reversed(waiting))
            else:
                group.status, group.reason = "failed", outcome.reason
                for edit_unit in waiting:
                    edit = self.edits[edit_unit.number]
                    edit.status, edit.reason = "failed", f"its inversion failed: {outcome.reason}"
                    settled.append(edit)
            return settled
        edit = self.edits[unit.number]
        edit.result = result
        edit.status = "done" if outcome.status == "done" else "failed"
        edit.reason = outcome.reason
        return [edit]

    def abandon(self) -> None:
        """Interrupted: what did not finish is "not run"."""
        for edit in self.plan.edits:
            if edit.status == "todo":
                edit.status, edit.reason = "not run", "interrupted"
        for group in self.plan.groups:
            if group.status == "todo":
                group.status, group.reason = "not run", "interrupted"
        self.ready.clear()
        self.waiting.clear()
        self.running.clear()


class BatchEvents:
    """What :func:`run_batch` tells as it goes; the CLI shows it. Every method may be left as is."""

    def started(self, unit: Unit, worker: str) -> None:
        pass

    def finished(self, unit: Unit, outcome: Outcome, settled: list[Any]) -> None:
        pass

    def reporter(self, unit: Unit) -> Any:
        """A reporter for a unit run in this process (stage progress), or None."""
        return None

    def message(self, text: str) -> None:
        pass


class _Serial:
    """Units run one after another in this process: one model load per model."""

    kind = "serial"

    def __init__(self, events: BatchEvents):
        self.events = events
        self.current: Unit | None = None
        self.capacity = 1
        self.workers = 1

    def idle(self) -> list[int]:
        return [] if self.current is not None else [0]

    def prefer(self, slot: int) -> tuple | None:
        return _MODEL[0]

    def submit(self, slot: int, unit: Unit) -> str:
        self.current = unit
        return "this process"

    def wait(self, timeout: float) -> list[tuple[Unit, Outcome]]:
        unit, self.current = self.current, None
        if unit is None:
            return []
        return [(unit, execute(unit, reporter=self.events.reporter(unit), worker="this process"))]

    def close(self, interrupted: bool = False) -> None:
        release_model()


def _pool_main(slot: int, device: str | None, threads: int, inbox: Any, results: Any) -> None:
    """A pool worker process: runs the units it is sent until it is sent None."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it terminates us
    name = f"worker {slot + 1}" + (f" ({device})" if device else "") + f", pid {os.getpid()}"
    while True:
        unit = inbox.get()
        if unit is None:
            return
        if device is not None and unit.config.device in ("auto", "cuda"):
            unit.config = unit.config.replace(device=device)
        results.put(("done", slot, unit.uid, execute(unit, worker=name, in_worker=True)))


class _Pool:
    """One spawned worker process per device (or ``workers`` on the CPU); a dead one is replaced
    and its unit given back to the schedule."""

    kind = "pool"

    def __init__(self, devices: list[str | None], threads: int):
        import multiprocessing

        self.ctx = multiprocessing.get_context("spawn")
        self.devices, self.threads = devices, threads
        self.results = self.ctx.Queue()
        self.procs: list[Any] = [None] * len(devices)
        self.inboxes: list[Any] = [None] * len(devices)
        self.current: list[Unit | None] = [None] * len(devices)
        self.models: list[tuple | None] = [None] * len(devices)
        self.capacity = self.workers = len(devices)
        for slot in range(len(devices)):
            self._start(slot)

    def _start(self, slot: int) -> None:
        self.inboxes[slot] = self.ctx.Queue()
        process = self.ctx.Process(
            target=_pool_main, args=(slot, self.devices[slot], self.threads, self.inboxes[slot], self.results),
            name=f"vedit-batch-{slot + 1}", daemon=True,
        )  # fmt: skip
        process.start()
        self.procs[slot] = process
        self.models[slot] = None

    def idle(self) -> list[int]:
        return [slot for slot, unit in enumerate(self.current) if unit is None]

    def prefer(self, slot: int) -> tuple | None:
        return self.models[slot]

    def submit(self, slot: int, unit: Unit) -> str:
        self.current[slot] = unit
        self.models[slot] = unit.model_key
        self.inboxes[slot].put(unit)
        device = self.devices[slot]
        return f"worker {slot + 1}" + (f" ({device})" if device else "")

    def wait(self, timeout: float) -> list[tuple[Unit, Outcome]]:
        done: list[tuple[Unit, Outcome]] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                _, slot, uid, outcome = self.results.get(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
            except queue.Empty:
                break
            unit = self.current[slot]
            if unit is not None and unit.uid == uid:
                self.current[slot] = None
                done.append((unit, outcome))
            if time.monotonic() >= deadline:
                break
        for slot, process in enumerate(self.procs):
            unit = self.current[slot]
            if unit is not None and not process.is_alive():
                code = process.exitcode
                why = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
                done.append((unit, Outcome("died", reason=f"worker {slot + 1} died ({why})", worker=f"worker {slot + 1}")))
                self.current[slot] = None
                self._start(slot)
        return done

    def close(self, interrupted: bool = False) -> None:
        for slot, process in enumerate(self.procs):
            if process is None:
                continue
            if interrupted:
                process.terminate()
            else:
                with contextlib.suppress(Exception):
                    self.inboxes[slot].put(None)
        for process in self.procs:
            if process is not None:
                process.join(timeout=30)
                if process.is_alive():
                    process.kill()
                    process.join()


class _RayWorker:
    """A Ray actor: one worker slot (one GPU where the cluster has GPUs) that keeps its model
    between units, like a pool worker process. Units run one at a time, in the order sent."""

    def __init__(self, slot: int):
        import ray

        self.name = f"ray worker {slot + 1} (node {ray.get_runtime_context().get_node_id()[:8]}, pid {os.getpid()})"

    def invert(self, unit: Unit) -> tuple[Outcome, bytes | None]:
        """One inversion; its trajectory also goes back as bytes, into the object store of this
        worker's machine, for edits on machines that cannot read this one's cache folder."""
        outcome = execute(unit, worker=self.name, in_worker=True)
        data = None
        if outcome.status == "done" and outcome.trajectory:
            with contextlib.suppress(OSError):
                data = Path(outcome.trajectory["path"]).read_bytes()
        return outcome, data

    def edit(self, unit: Unit, shared: list[Any] | None) -> Outcome:
        """One edit. ``shared`` holds its group's trajectory's object reference, nested in a list so
        that Ray fetches it only when this machine cannot read the shared cache folder."""
        import ray

        fetch = (lambda: ray.get(shared[0])) if shared else None
        return execute(unit, worker=self.name, in_worker=True, fetch=fetch)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise PluginError(f"{option_label('ray')} needs the ray package: pip install 'vedit[ray]'") from None
    return ray


class _Ray:
    """Units on Ray: ``workers`` actors (one GPU each on a cluster with GPUs, one CPU each
    otherwise), each keeping its model loaded like a pool worker. An actor whose process dies is
    replaced (Ray places the new one wherever a GPU or CPU is free) and its unit given back to the
    schedule; a unit's own failure is its outcome, never retried. The actors are ended with the
    batch, so no GPU memory stays held."""

    kind = "ray"

    def __init__(self, address: str, workers: int | None):
        ray = self.ray = _import_ray()
        self.started_here = False
        if not ray.is_initialized():
            # ray.init installs its own SIGTERM handler; vedit's (a terminated batch ends like
            # Ctrl-C: workers ended, summary written) is put back after it.
            on_term = signal.getsignal(signal.SIGTERM)
            try:
                if address == "auto":
                    try:
                        ray.init(address="auto", log_to_driver=False)
                    except ConnectionError:
                        ray.init(log_to_driver=False, include_dashboard=False)
                        self.started_here = True
                elif address == "local":
                    ray.init(log_to_driver=False, include_dashboard=False)
                    self.started_here = True
                else:
                    ray.init(address=address, log_to_driver=False)
            except Exception as error:  # noqa: BLE001 — one line, whatever Ray raises
                raise ConfigError(
                    f"{option_value('ray', address)}: cannot connect to a Ray cluster: {_reason(error)}"
                ) from None
            finally:
                with contextlib.suppress(ValueError, TypeError):  # not the main thread, or not a Python handler
                    signal.signal(signal.SIGTERM, on_term)
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        slots = self.gpus or max(1, int(resources.get("CPU", 1)))
        self.notes: list[str] = []
        if workers is not None and workers > slots:
            what = "GPUs" if self.gpus else "CPUs"
            self.notes.append(
                f"{option_value('workers', workers)}: the Ray cluster has {slots} {what}; using {slots} workers"
            )
        self.capacity = self.workers = min(workers or slots, slots)
        need = {"num_gpus": 1} if self.gpus else {"num_cpus": 1}
        self.actor_class = ray.remote(max_restarts=0, **need)(_RayWorker)
        self.actors: list[Any] = [self.actor_class.remote(slot) for slot in range(self.capacity)]
        self.current: list[Unit | None] = [None] * self.capacity
        self.models: list[tuple | None] = [None] * self.capacity
        self.pending: dict[Any, int] = {}  # an outcome's object reference → its slot
        self.data: dict[str, Any] = {}  # a running inversion's uid → its bytes' object reference
        self.shared: dict[str, Any] = {}  # an inversion's trajectory path → its bytes' object reference

    def idle(self) -> list[int]:
        return [slot for slot, unit in enumerate(self.current) if unit is None]

    def prefer(self, slot: int) -> tuple | None:
        return self.models[slot]

    def submit(self, slot: int, unit: Unit) -> str:
        actor = self.actors[slot]
        self.current[slot] = unit
        self.models[slot] = unit.model_key
        if unit.kind == "invert":
            ref, data = actor.invert.options(num_returns=2).remote(unit)
            self.data[unit.uid] = data
        else:
            path = (unit.trajectory or {}).get("path")
            ref = actor.edit.remote(unit, [self.shared[path]] if path in self.shared else None)
        self.pending[ref] = slot
        return f"ray worker {slot + 1}"

    def wait(self, timeout: float) -> list[tuple[Unit, Outcome]]:
        if not self.pending:
            return []
        ready, _ = self.ray.wait(list(self.pending), num_returns=len(self.pending), timeout=timeout)
        done = []
        for ref in ready:
            slot = self.pending.pop(ref)
            unit = self.current[slot]
            self.current[slot] = None
            assert unit is not None
            data = self.data.pop(unit.uid, None)
            try:
                outcome = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as error:
                why = (str(error).strip().splitlines() or ["it died"])[0][:160]
                outcome = Outcome("died", reason=f"ray worker {slot + 1} died ({why})", worker=f"ray worker {slot + 1}")
                self.actors[slot] = self.actor_class.remote(slot)
                self.models[slot] = None
            except Exception as error:  # noqa: BLE001 — e.g. the object store lost a result
                outcome = Outcome("failed", reason=_reason(error), worker=f"ray worker {slot + 1}")
            if outcome.status == "done" and outcome.trajectory and data is not None:
                self.shared[outcome.trajectory["path"]] = data
            done.append((unit, outcome))
        return done

    def close(self, interrupted: bool = False) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        self.actors.clear()
        self.pending.clear()
        self.data.clear()
        self.shared.clear()
        if self.started_here:
            self.ray.shutdown()


def local_devices() -> list[str]:
    """The CUDA devices of this machine, as ``cuda:N``."""
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def choose_backend(
    plan: Plan, *, workers: int | None = None, ray: str | None = None, events: BatchEvents | None = None,
) -> Any:
    """Ray with ``ray`` (an address, ``auto`` or ``local``); else a pool of worker processes when
    ``workers`` > 1 or this machine has several GPUs; else this process."""
    events = events or BatchEvents()
    if workers is not None and workers < 1:
        raise ConfigError(f"{option_label('workers')} must be 1 or more, got {workers}")
    if not plan.todo:
        return _Serial(events)  # nothing to do: no pool started, no cluster joined
    if ray:
        return _Ray(ray, workers)
    devices = local_devices()
    count = workers if workers is not None else (len(devices) if len(devices) > 1 else 1)
    if count <= 1:
        return _Serial(events)
    if devices:
        return _Pool([devices[i % len(devices)] for i in range(count)], threads=0)
    return _Pool([None] * count, threads=max(1, (os.cpu_count() or 1) // count))


# --------------------------------------------------------------------------------------------
# Running a plan


@dataclass
class BatchResult:
    plan: Plan
    seconds: float
    backend: str  # "serial", "pool" or "ray"
    workers: int
    model_loads: int
    summary: Path | None
    interrupted: bool = False

    @property
    def failed(self) -> list[PlannedEdit]:
        return [e for e in self.plan.edits if e.status == "failed"]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for e in self.plan.edits:
            counts[e.status] = counts.get(e.status, 0) + 1
        return counts


def default_summary_path(job_file: str | os.PathLike) -> Path:
    """``jobs.toml`` → ``jobs.summary.json`` beside it."""
    path = Path(job_file)
    return path.with_name(f"{path.stem}.summary.json")


def summary_document(plan: Plan, *, started: float, seconds: float, backend: str, workers: int, model_loads: int,
                     finished: bool) -> dict[str, Any]:  # fmt: skip
    counts: dict[str, int] = {}
    for e in plan.edits:
        counts[e.status] = counts.get(e.status, 0) + 1
    computed = sum(1 for g in plan.groups if g.status == "computed") + sum(
        1 for e in plan.edits if e.result.get("inversion") == "computed"
    )
    return {
        "format": SUMMARY_FORMAT,
        "job_file": str(plan.job_file.resolve()),
        "started": _dt.datetime.fromtimestamp(started).astimezone().isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "finished": finished,
        "backend": backend,
        "workers": workers,
        "model_loads": model_loads,
        "counts": {"edits": len(plan.edits), **counts},
        "inversions_computed": computed,
        "warnings": plan.warnings,
        "inversions": [g.record() for g in plan.groups],
        "edits": [e.record() for e in plan.edits],
    }


def run_batch(
    plan: Plan,
    *,
    workers: int | None = None,
    ray: str | None = None,
    retries: int = DEFAULT_RETRIES,
    events: BatchEvents | None = None,
    summary: str | os.PathLike | None = None,
    backend: Any = None,
) -> BatchResult:
    """Run every ``todo`` edit of ``plan`` (see :func:`choose_backend` for where); failures of one
    edit do not stop the others. The summary JSON (``summary``; None writes none) is rewritten
    after every result, so an interrupted batch leaves one too. A plan with ``refused`` edits raises
    :class:`OutputsRefused` before anything runs."""
    plan.check_outputs()
    events = events or BatchEvents()
    if retries < 0:
        raise ConfigError(f"{option_label('retries')} must be 0 or more, got {retries}")
    spec = os.environ.get(KILL_ONCE_ENV, "")
    fault = tuple(spec.rsplit(":", 1)) if ":" in spec else None
    began, wall = time.perf_counter(), time.time()
    scratch = tempfile.mkdtemp(prefix="vedit-batch-")
    schedule = _Schedule(plan, retries, fault, scratch)  # type: ignore[arg-type]
    backend = backend or choose_backend(plan, workers=workers, ray=ray, events=events)
    summary_path = Path(summary) if summary is not None else None

    def write_summary(finished: bool) -> None:
        if summary_path is None:
            return
        doc = summary_document(plan, started=wall, seconds=time.perf_counter() - began, backend=backend.kind,
                               workers=backend.workers, model_loads=schedule.model_loads, finished=finished)  # fmt: skip
        with contextlib.suppress(OSError):
            _write_json_atomically(summary_path, doc)

    interrupted = False
    try:
        if summary_path is not None:
            summary_path.parent.mkdir(parents=True, exist_ok=True)
            # A summary that cannot be written is found now, not after hours of work.
            try:
                _write_json_atomically(summary_path, summary_document(
                    plan, started=wall, seconds=0.0, backend=backend.kind, workers=backend.workers, model_loads=0,
                    finished=False))  # fmt: skip
            except OSError as error:
                from ..errors import OutputError

                raise OutputError(f"{summary_path}: cannot write the batch summary: {error.strerror or error}") from None
        while schedule.pending():
            for slot in backend.idle():
                unit = schedule.take(backend.prefer(slot))
                if unit is None:
                    break
                events.started(unit, backend.submit(slot, unit))
            for unit, outcome in backend.wait(timeout=0.5):
                settled = schedule.finish(unit, outcome)
                events.finished(unit, outcome, settled)
                if settled:
                    write_summary(False)
    except KeyboardInterrupt:
        interrupted = True
        schedule.abandon()
        raise
    finally:
        backend.close(interrupted=interrupted)
        write_summary(not interrupted)
        shutil.rmtree(scratch, ignore_errors=True)
    return BatchResult(plan, time.perf_counter() - began, backend.kind, backend.workers, schedule.model_loads,
                       summary_path)  # fmt: skip


__all__ = [
    "Job", "JobFile", "JobFileError", "Plan", "PlannedEdit", "InversionGroup", "Unit", "Outcome", "BatchEvents",
    "BatchResult", "read_job_file", "plan_batch", "run_batch", "choose_backend", "execute", "sidecar_path",
    "read_sidecar", "up_to_date", "settings_of", "digest_of", "prompt_slug", "default_summary_path",
    "FAILED_EXIT_CODE",
]

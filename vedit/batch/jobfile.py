"""Batch job files: reading one and validating it as a whole (every mistake names the job and the key;
nothing runs while one remains), the shared defaults under each job, input globs, path options made
absolute, and output patterns. :func:`read_job_file` gives :class:`Job` values."""

from __future__ import annotations

import glob
import os
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import (
    CONFIG_FILENAME,
    RunConfig,
    absolute_path,
    given_names,
    host_specs,
    merge,
    paths_from,
    read_config_file,
    read_toml,
    validate,
)
from ..errors import ConfigError

JOB_FORMAT = "vedit-batch/1"
DEFAULT_OUTPUT = "{clip}-{prompt_slug}-{seed}.mp4"

# Keys of a [[job]] table that are not run options.
SIDECAR_SUFFIX = ".vedit.json"  # beside each output a batch writes: the record of how it was made
JOB_KEYS = ("name", "input", "prompts", "seeds", "output")
BATCH_KEYS = ("output",)
# Output pattern fields.
PATTERN_FIELDS = ("clip", "job", "prompt_index", "prompt_slug", "seed", "editor")


class MultiLineError:
    """An error of one or more lines: ``errors`` holds each; the message is the first."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{errors[0]}{more}")


class JobFileError(MultiLineError, ConfigError):
    """A job file with one or more mistakes; ``errors`` holds one line each, in file order."""


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


def job_label(number: int, name: Any) -> str:
    return f"job {number}" + (f" ({name!r})" if isinstance(name, str) and name else "")


def _resolve_paths(values: dict[str, Any], written: Iterable[str], base: Path, cwd: Path) -> dict[str, Any]:
    """Path options (declared with ``path``, the host's and the plugins') made absolute: those
    ``written`` in the job file against its folder, the rest (defaults, vedit.toml) against the
    working directory, so that every worker reads the same files whatever its own working directory."""
    from ..model.builders import is_built_in

    written = set(written)
    out = paths_from(paths_from(values, base, only=written), cwd)
    for key in [name for name, (_, where) in host_specs().items() if where.folder_or_id]:
        value = out.get(key)
        if isinstance(value, str) and value and not (key == "model" and is_built_in(value)):
            candidate = Path(absolute_path(value, base if key in written else cwd))
            if candidate.is_dir() or (key == "model" and candidate.is_file()):  # a single-file checkpoint
                out[key] = str(candidate)
    return out


def sidecar_path(output: str | os.PathLike) -> Path:
    """Where the record of how ``output`` was made lives: ``out.mp4`` → ``out.mp4.vedit.json``,
    a frames folder ``frames/`` → ``frames.vedit.json``."""
    text = os.fspath(output).rstrip("/" + os.sep)
    return Path(text + SIDECAR_SUFFIX)


def _has_glob(text: str) -> bool:
    return glob.has_magic(text)


def _expand_inputs(patterns: list[str], base: Path, label: str, where: str, errors: list[str]) -> list[Path]:
    found: list[Path] = []
    for pattern in patterns:
        full = absolute_path(pattern, base)
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

    from ..config import host_names
    from ..plugins.options import declared, flat_names

    owners = declared()
    known = {k.replace("_", "-") for k in [*host_specs(), *flat_names(host_names())]}
    extra = tuple(extra)
    clean: dict[str, Any] = {}
    for key, value in values.items():
        is_table = isinstance(value, dict) and key.replace("-", "_") in owners  # [run.<plugin>]
        if key.replace("_", "-") not in known and not is_table:
            close = difflib.get_close_matches(key.replace("_", "-"), [*sorted(known), *extra], n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            takes = (
                f"a job takes {', '.join(extra)} and any option of 'vedit run'"
                if extra
                else "any option of 'vedit run', named like its flag"
            )
            errors.append(f"{origin}: unknown option {key!r} ({hint}{takes})")
            continue
        try:
            clean = merge(clean, validate({key: value}, origin))
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


def read_job_file(
    path: str | os.PathLike, *, config_path: str | os.PathLike | None = None, cwd: Path | None = None
) -> JobFile:
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
        hint = (
            "write each job as [[job]]"
            if key in ("jobs", "runs")
            else "a job file has [run], [batch] and [[job]] tables"
        )
        errors.append(f"{where}: unknown table or key {key!r} ({hint})")

    defaults: dict[str, Any] = {}
    if config_path is not None:
        defaults = read_config_file(config_path)
    elif (cwd / CONFIG_FILENAME).is_file():
        defaults = read_config_file(cwd / CONFIG_FILENAME)
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
        label = job_label(number, table.get("name"))
        count = len(errors)
        name = table.get("name")
        if name is not None and not (isinstance(name, str) and name):
            errors.append(f"{where}: {label}: 'name' must be a non-empty string, got {name!r}")
            name = None
        options = {k: v for k, v in table.items() if k not in JOB_KEYS}
        own = _validate_each(
            options,
            f"{where}: {label}",
            errors,
            extra=("input", "prompt", "prompts", "seed", "seeds", "name", "output"),
        )
        values = merge(merge(defaults, shared), own)
        written = given_names(shared) | given_names(own)

        inputs: list[Path] = []
        patterns = _strings(table.get("input"))
        if "input" not in table:
            errors.append(
                f"{where}: {label}: no 'input': give a clip, a folder of frames or a glob such as 'clips/*.mp4'"
            )
        elif patterns is None:
            errors.append(
                f"{where}: {label}: 'input' must be a path or glob, or a list of them, got {table['input']!r}"
            )
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
                errors.append(
                    f"{where}: {label}: 'prompts' must be a non-empty list of non-empty strings, got {given!r}"
                )
        elif values.get("prompt"):
            prompts = [values["prompt"]]
        else:
            errors.append(f"{where}: {label}: no target prompt: give 'prompt' or 'prompts' (or 'prompt' under [run])")

        seeds: list[int] = []
        if "seeds" in table and "seed" in own:
            errors.append(f"{where}: {label}: give 'seed' or 'seeds', not both")
        elif "seeds" in table:
            given = table["seeds"]
            ok = (
                isinstance(given, list) and given and all(isinstance(s, int) and not isinstance(s, bool) for s in given)
            )
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
            errors.append(
                f"{where}: {label}: 'output' must be a non-empty string "
                f"(a pattern such as {DEFAULT_OUTPUT!r}), got {output!r}"
            )
        else:
            try:
                fields = _pattern_fields(output)
            except ValueError as error:
                errors.append(
                    f"{where}: {label}: output pattern {output!r} is malformed ({error}); "
                    "write a literal brace as {{ or }}"
                )
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

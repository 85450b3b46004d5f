"""``vedit batch``: many clips × many prompts from one job file, planned so each clip is inverted once,
skipped when up to date, run in this process, in a local pool of worker processes (one per GPU), or as Ray
tasks.

The stages are plain values, each usable alone:

* :func:`read_job_file` parses and validates a job file as a whole (every error names the job and
  the key; nothing runs while one remains) into :class:`Job` values (:mod:`vedit.batch.jobfile`);
* :func:`plan_batch` expands them into a :class:`Plan`: one :class:`PlannedEdit` per (clip, prompt,
  seed), grouped into :class:`InversionGroup` values (edits that share one inversion), with what is
  already up to date marked ``skipped`` (a sidecar JSON beside each output records the settings
  digest it was made with) and the UNet forwards each edit will make (:mod:`vedit.batch.plan`);
* :func:`run_batch` runs a plan: units (one inversion per group with two or more edits to do, then
  its edits; :mod:`vedit.batch.workers`) go in the order of :mod:`vedit.batch.scheduler` to a
  backend (:mod:`vedit.batch.backends`) — this process (``workers=1``), a pool of spawned processes,
  or Ray — and every result lands in the plan and in the summary JSON (:mod:`vedit.batch.run`).

A unit never raises into the scheduler: a :class:`~vedit.errors.VeditError` (bad clip, bad option
combination, unwritable output) or any other exception is the unit's ``failed`` outcome, reported
once and never retried. Only a worker process that dies (killed, out of host memory, a crash in a
native library) has its unit retried, up to ``retries`` times, on a fresh worker.

This package re-exports the public names of the former module ``vedit.batch``.
"""

from .backends import choose_backend
from .jobfile import Job, JobFile, JobFileError, read_job_file
from .plan import (
    InversionGroup,
    OutputsRefused,
    Plan,
    PlannedEdit,
    digest_of,
    plan_batch,
    prompt_slug,
    read_sidecar,
    settings_of,
    sidecar_path,
    up_to_date,
)
from .run import FAILED_EXIT_CODE, BatchResult, default_summary_path, run_batch
from .scheduler import BatchEvents
from .workers import Outcome, Unit, execute

__all__ = [
    "Job",
    "JobFile",
    "JobFileError",
    "Plan",
    "PlannedEdit",
    "InversionGroup",
    "Unit",
    "Outcome",
    "BatchEvents",
    "BatchResult",
    "read_job_file",
    "plan_batch",
    "run_batch",
    "choose_backend",
    "execute",
    "sidecar_path",
    "read_sidecar",
    "up_to_date",
    "settings_of",
    "digest_of",
    "prompt_slug",
    "default_summary_path",
    "FAILED_EXIT_CODE",
    "OutputsRefused",
]

"""Benchmark suites behind ``vedit bench``, registered through the public ``register_commands`` hook.

Every figure is measured, never assumed: times are medians (with min and max) of synchronised
runs after a warm-up, FLOPs are counted by ``torch.utils.flop_counter`` over the very modules and
shapes timed, UNet work by the code's own forward counter, and peak memory in a fresh process per
configuration. Each result is a JSON document with a header (machine, device, versions, settings,
timing rule), written under ``bench/results/`` unless ``--no-save``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Optional

import typer

from vedit.plugins.hookspecs import hookimpl

_JSON = "Print the JSON document on stdout instead of the table."
_SAVE = "Write the results to this file (default: bench/results/<suite>-<host>-<device>-<date>.json)."
_NO_SAVE = "Write no results file."
_REPEATS = "Timed runs (after the warm-up); the figure is their median, with min and max."
_WARMUP = "Untimed runs first (builds, caches, allocator)."
_VS = (
    "Compare with a second configuration, run alternately A,B,A,B,...: KEY=VALUE[,KEY=VALUE], keys are this "
    "command's options (engine=compile, dtype=bf16) or vedit run options; the ratio B/A is shown pair by pair."
)
_CLIP_FORMAT = (
    "The synthetic clip and the edit's output: mp4 (H.264, through ffmpeg and PyAV) or png (folders of PNG frames, "
    "which need neither)."
)
_PEAK = "Also measure the matmul peak (a large GEMM) and show each figure's fraction of it."


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Errors a user can cause end in one line and their exit code, like every vedit command."""
    from vedit.cli.output import user_errors

    with user_errors():
        yield


def _suite(module: str, function: str):
    """``vedit_bench.<module>.<function>``, imported when the command runs; a suite module that is
    missing from this installation is one line, not a traceback."""
    import importlib

    from vedit.errors import PluginError

    try:
        return getattr(importlib.import_module(f"{__name__}.{module}"), function)
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{module}":
            raise
        raise PluginError(
            f"the bench suite {module!r} is not part of this installation ({__name__}.{module} is missing)"
        ) from None


def _ints(text: str, flag: str) -> list[int]:
    from vedit.errors import ConfigError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{flag} takes numbers of 1 or more, got {text!r}")
    return values


def _save(suite: str, device: str, save: Optional[str], no_save: bool) -> Optional[str]:
    from ._common import resolve_save

    return resolve_save(suite, device, save, no_save)


def _add_edit(bench: typer.Typer) -> None:
    """Add ``vedit bench edit`` to ``bench``."""

    @bench.command("edit")
    def edit(
        model: str = typer.Option(
            "random:sd21",
            help="Model spec (tiny, tiny-sdxl, random:sd15, random:sd21, random:sd21-v, random:sdxl, a hub id, "
            "folder or file).",
        ),
        size: str = typer.Option("512x512", help="Working size WxH (the synthetic clip is made at this size)."),
        frames: int = typer.Option(40, help="Frames of the synthetic clip."),
        steps: int = typer.Option(50, help="Sampling steps."),
        inversion_steps: int = typer.Option(50, help="DDIM inversion steps."),
        engine: str = typer.Option("auto", help="UNet engine (or a list a,b), as vedit run's --engine."),
        dtype: str = typer.Option("auto", help="fp32, fp16, bf16 or auto."),
        device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N, mps."),
        chunk_size: int = typer.Option(8, help="tokenflow: frames per chunk B."),
        batch_size: int = typer.Option(8, help="Frames per VAE and inversion batch."),
        editor: str = typer.Option("pnp", help="Editor."),
        propagator: str = typer.Option("tokenflow", help="Propagator."),
        seed: int = typer.Option(0, help="Seed of the keyframe draws (random weights: --model random:sd21@N)."),
        repeats: int = typer.Option(3, help=_REPEATS),
        warmup: int = typer.Option(1, help=_WARMUP),
        reuse_inversion: bool = typer.Option(
            False, help="Share one inversion cache, so timed runs read the inversion instead of computing it."
        ),
        engine_cache: Optional[str] = typer.Option(
            None, help="Engine cache folder (default: a temporary one shared by the runs)."
        ),
        clip_format: str = typer.Option("mp4", help=_CLIP_FORMAT),
        vs: Optional[str] = typer.Option(None, help=_VS),
        peak: bool = typer.Option(True, help=_PEAK),
        json_out: bool = typer.Option(False, "--json", help=_JSON),
        save: Optional[str] = typer.Option(None, help=_SAVE),
        no_save: bool = typer.Option(False, "--no-save", help=_NO_SAVE),
    ) -> None:
        """A whole edit, end to end, per part: read, encode, invert, keyframe pass, propagation pass, NN search, \
decode, write."""
        with _errors():
            from .edit import run_edit_suite

            run_edit_suite(
                model=model, size=size, frames=frames, steps=steps, inversion_steps=inversion_steps, engine=engine,
                dtype=dtype, device=device, chunk_size=chunk_size, batch_size=batch_size, editor=editor,
                propagator=propagator, seed=seed, repeats=repeats, warmup=warmup, reuse_inversion=reuse_inversion,
                engine_cache=engine_cache, clip_format=clip_format, vs=vs, peak=peak, json_out=json_out,
                save=_save("edit", device, save, no_save),
            )  # fmt: skip


def _add_invert(bench: typer.Typer) -> None:
    """Add ``vedit bench invert`` to ``bench``."""

    @bench.command("invert")
    def invert(
        model: str = typer.Option("random:sd21", help="Model spec."),
        size: str = typer.Option("512x512", help="Working size WxH."),
        frames: int = typer.Option(16, help="Frames inverted per run."),
        inversion_steps: int = typer.Option(10, help="DDIM inversion steps."),
        steps: Optional[int] = typer.Option(
            None, help="Sampling steps whose schedule is kept (default: the inversion steps)."
        ),
        batch_size: str = typer.Option("8", help="Comma-separated frames per UNet call, e.g. 1,8,16."),
        engines: Optional[str] = typer.Option(
            None, help="Comma-separated engines (default: every one that runs here; eager with --vs)."
        ),
        dtype: str = typer.Option("auto", help="fp32, fp16, bf16 or auto."),
        device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N, mps."),
        seed: int = typer.Option(0, help="Seed of the random latents (random weights: --model random:sd21@N)."),
        repeats: int = typer.Option(3, help=_REPEATS),
        warmup: int = typer.Option(1, help=_WARMUP),
        engine_cache: Optional[str] = typer.Option(
            None, help="Engine cache folder (default: a new temporary one, so builds are timed)."
        ),
        vs: Optional[str] = typer.Option(None, help=_VS),
        peak: bool = typer.Option(True, help=_PEAK),
        json_out: bool = typer.Option(False, "--json", help=_JSON),
        save: Optional[str] = typer.Option(None, help=_SAVE),
        no_save: bool = typer.Option(False, "--no-save", help=_NO_SAVE),
    ) -> None:
        """Frames per second of DDIM inversion, per engine and batch size."""
        with _errors():
            from .invert import run_invert_suite

            run_invert_suite(
                model=model, size=size, frames=frames, inversion_steps=inversion_steps, steps=steps,
                batch_size=_ints(batch_size, "--batch-size"), engines=engines, device=device, dtype=dtype, seed=seed,
                repeats=repeats, warmup=warmup, engine_cache=engine_cache, vs=vs, peak=peak, json_out=json_out,
                save=_save("invert", device, save, no_save),
            )  # fmt: skip


def _add_unet(bench: typer.Typer) -> None:
    """Add ``vedit bench unet`` to ``bench``."""

    @bench.command("unet")
    def unet(
        model: str = typer.Option("random:sd21", help="Model spec."),
        size: str = typer.Option("512x512", help="Image size WxH."),
        batches: str = typer.Option(
            "1,4,8",
            help=(
                "Comma-separated frames per call: plain runs that many latents, keyframe that many keyframes and "
                "propagation a chunk of that many frames (×3 branches)."
            ),
        ),
        passes: str = typer.Option(
            "plain,keyframe,propagation",
            help="Comma-separated passes: any registered pass (vedit plugins lists them, kind pass).",
        ),
        repeats: int = typer.Option(3, help=_REPEATS),
        warmup: int = typer.Option(1, help=_WARMUP),
        device: str = typer.Option("auto", help="Device."),
        dtype: str = typer.Option("auto", help="dtype."),
        engines: Optional[str] = typer.Option(
            None, help="Comma-separated engines to compare with eager (default: every one that runs here)."
        ),
        engine_cache: Optional[str] = typer.Option(
            None, help="Engine cache folder (default: a new temporary one, so builds are timed)."
        ),
        peak: bool = typer.Option(True, help=_PEAK),
        json_out: bool = typer.Option(False, "--json", help=_JSON),
        save: Optional[str] = typer.Option(None, help=_SAVE),
        no_save: bool = typer.Option(False, "--no-save", help=_NO_SAVE),
    ) -> None:
        """Time the UNet passes (plain, keyframe, propagation) through every engine at several batch sizes, as \
ratios to eager."""
        with _errors():
            from .unet import run_unet_suite

            run_unet_suite(
                model=model, size=size, batches=_ints(batches, "--batches"), passes=passes, repeats=repeats,
                warmup=warmup, device=device, dtype=dtype, engines=engines, engine_cache=engine_cache, peak=peak,
                json_out=json_out, save=_save("unet", device, save, no_save),
            )  # fmt: skip


def _add_nn(bench: typer.Typer) -> None:
    """Add ``vedit bench nn`` to ``bench``."""

    @bench.command("nn")
    def nn(
        seqs: str = typer.Option("4096,1024,256,64", help="Comma-separated tokens per frame (sequence lengths)."),
        chunk_size: int = typer.Option(8, help="Frames per chunk B."),
        backends: Optional[str] = typer.Option(
            None, help="Comma-separated NN backends (default: every one that runs here)."
        ),
        device: str = typer.Option("auto", help="Device."),
        dtype: str = typer.Option("auto", help="dtype."),
        repeats: int = typer.Option(3, help=_REPEATS),
        save: Optional[str] = typer.Option(None, help=_SAVE),
        no_save: bool = typer.Option(False, "--no-save", help=_NO_SAVE),
    ) -> None:
        """Nearest-neighbour search of the propagation pass, per backend and sequence length."""
        with _errors():
            run_nn_suite = _suite("nn", "run_nn_suite")
            run_nn_suite(
                seqs=_ints(seqs, "--seqs"), chunk_size=chunk_size,
                backends=[b.strip() for b in backends.split(",") if b.strip()] if backends else None,
                device=device, dtype=dtype, repeats=repeats, save=_save("nn", device, save, no_save),
            )  # fmt: skip


def _add_calls(bench: typer.Typer) -> None:
    """Add ``vedit bench calls`` to ``bench``."""

    @bench.command("calls")
    def calls(
        model: str = typer.Option("random:sd21", help="Model spec."),
        size: str = typer.Option("128x128", help="Image size WxH."),
        batch: int = typer.Option(8, help="Images per call."),
        repeats: int = typer.Option(3, help=_REPEATS),
        device: str = typer.Option("auto", help="Device."),
        dtype: str = typer.Option("auto", help="dtype."),
        save: Optional[str] = typer.Option(None, help=_SAVE),
        no_save: bool = typer.Option(False, "--no-save", help=_NO_SAVE),
    ) -> None:
        """Per-call time and page faults of a plain diffusers UNet forward against vedit's plain pass."""
        with _errors():
            run_calls_suite = _suite("calls", "run_calls_suite")
            run_calls_suite(model=model, size=size, batch=batch, repeats=repeats, device=device, dtype=dtype,
                            save=_save("calls", device, save, no_save))  # fmt: skip


def _add_batch(bench: typer.Typer) -> None:
    """Add ``vedit bench batch`` to ``bench``."""

    @bench.command("batch")
    def batch(
        clips: int = typer.Option(2, help="Synthetic clips in the job file."),
        prompts: int = typer.Option(3, help="Prompts per clip (at most 6)."),
        frames: int = typer.Option(8, help="Frames per clip."),
        size: str = typer.Option("64x64", help="Clip size WxH."),
        steps: int = typer.Option(4, help="Sampling and inversion steps."),
        model: str = typer.Option("tiny", help="Model spec."),
        chunk_size: int = typer.Option(4, help="tokenflow: frames per chunk B."),
        workers: int = typer.Option(2, help="Workers of the local pool and of Ray."),
        modes: str = typer.Option("serial,pool,ray", help="Ways to run it, comma-separated: serial, pool, ray."),
        device: str = typer.Option("cpu", help="Device of every edit (auto: the GPUs, one per pool worker)."),
        serial_threads: Optional[int] = typer.Option(
            None, help="Torch threads of the serial run (default: cores / workers, as each worker)."
        ),
        json_out: bool = typer.Option(False, "--json", help=_JSON),
        save: Optional[str] = typer.Option(None, help=_SAVE),
        no_save: bool = typer.Option(False, "--no-save", help=_NO_SAVE),
    ) -> None:
        """Wall time of one job file run serially, in a local pool and on local Ray (same work, counted)."""
        with _errors():
            from .batch import run_batch_suite

            run_batch_suite(
                clips=clips,
                prompts=prompts,
                frames=frames,
                size=size,
                steps=steps,
                model=model,
                chunk_size=chunk_size,
                workers=workers,
                modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
                device=device,
                serial_threads=serial_threads,
                json_out=json_out,
                save=_save("batch", device, save, no_save),
            )


def _add_memory(bench: typer.Typer) -> None:
    """Add ``vedit bench memory`` to ``bench``."""

    @bench.command("memory")
    def memory(
        frames: str = typer.Option("16,64,256", help="Comma-separated frame counts."),
        model: str = typer.Option("tiny", help="Model spec (tiny, tiny-sdxl, random:sd15, random:sdxl, ...)."),
        size: str = typer.Option("64x64", help="Working size WxH."),
        steps: int = typer.Option(2, help="Sampling (and inversion) steps."),
        editor: str = typer.Option("pnp", help="Editor."),
        propagator: str = typer.Option("tokenflow", help="Propagator."),
        chunk_size: int = typer.Option(8, help="Chunk size B."),
        max_joint_keyframes: int = typer.Option(32, help="tokenflow: keyframes each keyframe attends to (M)."),
        device: str = typer.Option("auto", help="Device."),
        dtype: str = typer.Option("auto", help="dtype."),
        clip_format: str = typer.Option("mp4", help=_CLIP_FORMAT),
        json_out: bool = typer.Option(False, "--json", help=_JSON),
        save: Optional[str] = typer.Option(None, help=_SAVE),
        no_save: bool = typer.Option(False, "--no-save", help=_NO_SAVE),
    ) -> None:
        """Peak memory and time per frame of whole edits at several frame counts (one fresh process each)."""
        with _errors():
            from .memory import run_memory_suite

            run_memory_suite(
                _ints(frames, "--frames"), model=model, size=size, steps=steps, editor=editor, propagator=propagator,
                chunk_size=chunk_size, device=device, dtype=dtype, json_out=json_out,
                save=_save("memory", device, save, no_save), max_joint_keyframes=max_joint_keyframes,
                clip_format=clip_format,
            )  # fmt: skip


def _add_work(bench: typer.Typer) -> None:
    """Add ``vedit bench work`` to ``bench``."""

    @bench.command("work")
    def work(
        frames: str = typer.Option("8,13,40", help="Comma-separated frame counts."),
        chunk_size: int = typer.Option(8, help="Chunk size B."),
        steps: int = typer.Option(2, help="Steps."),
        json_out: bool = typer.Option(False, "--json", help=_JSON),
        save: Optional[str] = typer.Option(None, help=_SAVE),
        no_save: bool = typer.Option(False, "--no-save", help=_NO_SAVE),
    ) -> None:
        """UNet image-forwards per frame per step for each propagator, counted by the code (tiny model)."""
        with _errors():
            from .work import run_work_suite

            run_work_suite(_ints(frames, "--frames"), chunk_size=chunk_size, steps=steps, json_out=json_out,
                           save=_save("work", "cpu", save, no_save))  # fmt: skip


def _add_consistency(bench: typer.Typer) -> None:
    """Add ``vedit bench consistency`` to ``bench``."""

    @bench.command("consistency")
    def consistency(
        seeds: str = typer.Option("0,1,2", help="Comma-separated model seeds."),
        frames: int = typer.Option(12, help="Frames of the translating clip."),
        size: str = typer.Option("128x128", help="Working size WxH (the clip moves 8 px per frame)."),
        steps: int = typer.Option(10, help="Sampling (and inversion) steps."),
        editor: str = typer.Option("pnp", help="Editor."),
        chunk_size: int = typer.Option(4, help="Chunk size B."),
        save: Optional[str] = typer.Option(None, help="Also write the results as JSON to this file."),
    ) -> None:
        """Warp error of tokenflow against none on a translating pattern (consistency test model, CPU)."""
        with _errors():
            from .consistency import run_consistency_suite

            run_consistency_suite(
                [int(s) for s in seeds.split(",")],
                frames=frames,
                size=size,
                steps=steps,
                editor=editor,
                chunk_size=chunk_size,
                save=save,
            )


def _add_quality(bench: typer.Typer) -> None:
    """Add ``vedit bench quality`` to ``bench``."""

    @bench.command("quality")
    def quality(
        clips: list[str] = typer.Argument(..., help="Clips to edit, PATH or PATH:FRAMES (the first FRAMES frames)."),
        size: str = typer.Option("128x96", help="Working size WxH; outputs are written and scored at it."),
        steps: int = typer.Option(10, help="Sampling (and inversion) steps."),
        seed: int = typer.Option(0, help="Seed of the edits (noise, keyframes); the models are built from seed 0."),
        chunk_size: int = typer.Option(8, help="Chunk size B."),
        flow: str = typer.Option("dis", help="Flow backend for the warp error and deflicker-flow."),
        save: Optional[str] = typer.Option(None, help=_SAVE),
        no_save: bool = typer.Option(False, "--no-save", help=_NO_SAVE),
    ) -> None:
        """Warp error of none and tokenflow, with and without each deflicker, on real clips (tiny models, CPU)."""
        with _errors():
            run_quality_suite = _suite("quality", "run_quality_suite")
            run_quality_suite(clips, size=size, steps=steps, seed=seed, chunk_size=chunk_size, flow=flow,
                              save=_save("quality", "cpu", save, no_save))  # fmt: skip


def _add_checksums(bench: typer.Typer) -> None:
    """Add ``vedit bench checksums`` to ``bench``."""

    @bench.command("checksums")
    def checksums(
        frames: int = typer.Option(120, help="Frames of the trajectory read."),
        size: str = typer.Option("512x512", help="Working size WxH of the trajectory (latents WxH / 8)."),
        steps: int = typer.Option(50, help="Sampling steps: the trajectory holds one tensor per step, and z_T."),
        dtypes: str = typer.Option("fp16,fp32", help="Comma-separated dtypes of the trajectory: fp16, bf16, fp32."),
        file_gb: float = typer.Option(1.0, help="GB of the engine cache file checked (0: none)."),
        hash_mb: int = typer.Option(256, help="MB of memory each hash is timed over."),
        repeats: int = typer.Option(5, help=_REPEATS + " For the trajectory: pairs of reads, unchecked then checked."),
        warmup: int = typer.Option(1, help=_WARMUP),
        json_out: bool = typer.Option(False, "--json", help=_JSON),
        save: Optional[str] = typer.Option(None, help=_SAVE),
        no_save: bool = typer.Option(False, "--no-save", help=_NO_SAVE),
    ) -> None:
        """What the checksums cost: the hashes, a trajectory read with and without its checks, an engine file's \
check."""
        with _errors():
            import torch

            from vedit.errors import ConfigError
            from vedit.io.frames import parse_size
            from vedit.model.device import dtype_name

            from .checksums import run_checksums_suite

            names = {dtype_name(d): d for d in (torch.float16, torch.bfloat16, torch.float32)}
            chosen = [d.strip() for d in dtypes.split(",") if d.strip()]
            unknown = [d for d in chosen if d not in names]
            if unknown or not chosen:
                raise ConfigError(f"--dtypes takes fp16, bf16 and fp32, comma-separated; got {dtypes!r}")
            if file_gb < 0 or hash_mb < 1 or frames < 1 or steps < 1 or repeats < 1 or warmup < 0:
                raise ConfigError(
                    "--frames, --steps, --hash-mb and --repeats take 1 or more, --file-gb and --warmup 0 or more"
                )
            run_checksums_suite(
                frames=frames, size=parse_size(size), steps=steps, dtypes=[names[d] for d in chosen], file_gb=file_gb,
                hash_mb=hash_mb, repeats=repeats, warmup=warmup, json_out=json_out,
                save=_save("checksums", "cpu", save, no_save),
            )  # fmt: skip


def _add_compare(bench: typer.Typer) -> None:
    """Add ``vedit bench compare`` to ``bench``."""

    @bench.command("compare")
    def compare(
        a: str = typer.Argument(..., help="The first results file (A)."),
        b: str = typer.Argument(..., help="The second results file (B)."),
        json_out: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
    ) -> None:
        """Two results files side by side: rows matched by their key fields, both medians and the ratio B/A."""
        with _errors():
            from .compare import run_compare

            run_compare(a, b, json_out=json_out)


@hookimpl
def register_commands(app):
    bench = typer.Typer(
        help="Measure speed, FLOP rates, memory and UNet work; compare results files.", no_args_is_help=True
    )
    app.add_typer(bench, name="bench")
    # 'vedit bench --help' lists them in this order
    for add in (
        _add_edit,
        _add_invert,
        _add_unet,
        _add_nn,
        _add_calls,
        _add_batch,
        _add_memory,
        _add_work,
        _add_consistency,
        _add_quality,
        _add_checksums,
        _add_compare,
    ):
        add(bench)

"""``vedit run``: edit a clip so that it shows a prompt (or, with --preview, only its keyframes)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from .options import (
    CACHE_DIR_DEFAULT,
    CACHE_DIR_HELP,
    ENGINE_CACHE_DEFAULT,
    INVERSION_STEPS_HELP,
    config_from_flags,
    option_help,
)
from .output import out_console, reporting, rows_table, summary_table, user_errors


def add_to(app: typer.Typer) -> None:
    """Add ``vedit run`` to ``app``."""

    @app.command()
    def run(
        clip: Path = typer.Argument(..., help="Input video file, or a folder of numbered images."),
        prompt: Optional[str] = typer.Option(
            None, "--prompt", "-p", help=option_help("What the edited video should show (required).")
        ),
        output: Optional[Path] = typer.Option(
            None,
            "--output",
            "-o",
            help=option_help(
                "Output .mp4/.mov/.mkv (H.264), .webm (VP9), .gif, or a folder for PNG frames.",
                default="<clip>-edited.mp4 here",
            ),
        ),
        overwrite: bool = typer.Option(
            False,
            "--overwrite",
            help=option_help(
                "Replace an existing output (video, frames, preview sheet, --eval report) that vedit did not write; "
                "what vedit wrote is replaced without it."
            ),
        ),
        source_prompt: Optional[str] = typer.Option(
            None, help=option_help("What the input shows (inversion and source branch).", "source_prompt")
        ),
        negative_prompt: Optional[str] = typer.Option(
            None, help=option_help("Negative prompt (the unconditional branch).", "negative_prompt")
        ),
        editor: Optional[str] = typer.Option(
            None, help=option_help("Editor plugin: pnp, sdedit, img2img, or a plugin's.", "editor")
        ),
        propagator: Optional[str] = typer.Option(
            None, help=option_help("Propagator plugin: tokenflow, none, or a plugin's.", "propagator")
        ),
        engine: Optional[str] = typer.Option(
            None,
            help=option_help(
                "UNet engine: eager, compile, torchscript, onnxruntime, tensorrt, torch-tensorrt, a plugin's, auto, "
                "or a comma-separated list to try in order.",
                "engine",
            ),
        ),
        engine_cache: Optional[str] = typer.Option(
            None,
            help=option_help(
                "Folder of built engines (ONNX, TorchScript, TensorRT plans).", default=ENGINE_CACHE_DEFAULT
            ),
        ),
        nn_backend: Optional[str] = typer.Option(
            None, help=option_help("Nearest-neighbour backend: torch, faiss or auto.", "nn_backend")
        ),
        model: Optional[str] = typer.Option(
            None,
            help=option_help(
                "Hub id, local diffusers folder, tiny, random:sd15 or random:sd21 (tiny@N: weights from seed N).",
                "model",
            ),
        ),
        revision: Optional[str] = typer.Option(None, help=option_help("Model revision (hub branch, tag or commit).")),
        steps: Optional[int] = typer.Option(None, help=option_help("Sampling steps T.", "steps")),
        inversion_steps: Optional[int] = typer.Option(None, help=option_help(INVERSION_STEPS_HELP, "inversion_steps")),
        strength: Optional[float] = typer.Option(
            None, help=option_help("img2img: fraction of the schedule to run.", "strength")
        ),
        start: Optional[float] = typer.Option(
            None, help=option_help("sdedit: fraction of the schedule to run from the DDIM noise.", "start")
        ),
        guidance: Optional[float] = typer.Option(None, help=option_help("Classifier-free guidance scale.", "guidance")),
        pnp_f_t: Optional[float] = typer.Option(
            None, help=option_help("pnp: fraction of steps with conv feature injection.", "pnp_f_t")
        ),
        pnp_attn_t: Optional[float] = typer.Option(
            None, help=option_help("pnp: fraction of steps with self-attention Q/K injection.", "pnp_attn_t")
        ),
        chunk_size: Optional[int] = typer.Option(
            None, help=option_help("tokenflow: frames per chunk B (one keyframe each).", "chunk_size")
        ),
        max_joint_keyframes: Optional[int] = typer.Option(
            None,
            help=option_help(
                "tokenflow: keyframes each keyframe's extended attention covers "
                "(itself, its neighbours, a seeded spread); all of them while K <= this.",
                "max_joint_keyframes",
            ),
        ),
        keyframes: Optional[str] = typer.Option(
            None,
            help=option_help(
                'tokenflow: JSON keyframe schedule file, {"keyframes": [[k, ...], ...]}, one list per step.'
            ),
        ),
        inversion: Optional[str] = typer.Option(
            None, help=option_help("Use this trajectory file (from 'vedit invert -o') instead of inverting.")
        ),
        force_inversion: bool = typer.Option(
            False,
            "--force-inversion",
            help=option_help("Use the --inversion file even if it was made from another clip, model or source prompt."),
        ),
        seed: Optional[int] = typer.Option(
            None,
            help=option_help(
                "Random seed of the img2img noise and the keyframe draws "
                "(a built model's weights come from its spec: tiny@N).",
                "seed",
            ),
        ),
        size: Optional[str] = typer.Option(
            None, help=option_help("Working size WxH (multiples of 8).", default="short side near 512")
        ),
        frames: Optional[str] = typer.Option(
            None, help=option_help("Frame range START:STOP:STEP (source frame indices, STOP exclusive).", default="all")
        ),
        max_frames: Optional[int] = typer.Option(None, help=option_help("At most this many frames.")),
        allow_short: bool = typer.Option(
            False,
            "--allow-short",
            help=option_help(
                "Accept a clip that ends before its container says: warn and edit the frames that could be read."
            ),
        ),
        fps: Optional[str] = typer.Option(
            None,
            help=option_help("Source frame rate override (folders of images default to 24).", default="the source's"),
        ),
        keep_timestamps: bool = typer.Option(
            False,
            "--keep-timestamps",
            help=option_help(
                "Keep a variable-rate source's own frame times instead of resampling it to its average rate."
            ),
        ),
        output_size: Optional[str] = typer.Option(None, help=option_help("source, working or WxH.", "output_size")),
        device: Optional[str] = typer.Option(None, help=option_help("auto, cpu, cuda, cuda:N or mps.", "device")),
        dtype: Optional[str] = typer.Option(None, help=option_help("auto, fp32, fp16 or bf16.", "dtype")),
        batch_size: Optional[str] = typer.Option(
            None,
            help=option_help(
                "Frames per VAE / inversion / per-frame UNet batch, or auto (from free device memory).", "batch_size"
            ),
        ),
        postprocess: Optional[str] = typer.Option(
            None,
            help=option_help(
                "Post-processors applied to the decoded frames, in order: NAME[:KEY=VALUE...], comma-separated "
                "(deflicker-luma,deflicker-flow:strength=0.7)."
            ),
        ),
        eval_: Optional[bool] = typer.Option(
            None,
            "--eval/--no-eval",
            help=option_help(
                "After writing, measure the edit as 'vedit eval' does and write the report beside the output "
                "(out.mp4 -> out.eval.json)."
            ),
        ),
        flow: Optional[str] = typer.Option(
            None, help=option_help("Optical-flow backend for --eval: dis, raft or a plugin's.", "flow")
        ),
        clip_model: Optional[str] = typer.Option(
            None,
            "--clip",
            help=option_help(
                "CLIP model for --eval's text and frame scores: a hub id already in the local cache, "
                "or a folder (never downloaded).",
                "clip",
            ),
        ),
        cache_dir: Optional[str] = typer.Option(None, help=option_help(CACHE_DIR_HELP, default=CACHE_DIR_DEFAULT)),
        cache_max_gb: Optional[float] = typer.Option(
            None,
            help=option_help("Cache size cap in GB; the least recently used inversions are evicted.", "cache_max_gb"),
        ),
        no_cache: bool = typer.Option(
            False, "--no-cache", help=option_help("Neither read nor write the inversion cache (nor checkpoints).")
        ),
        preview: bool = typer.Option(
            False,
            "--preview",
            help=option_help(
                "Edit only the keyframes (one per chunk) and write them beside their source frames as a contact sheet "
                "PNG (-o FILE.png, or <output>.preview.png); the summary says what the full run will cost."
            ),
        ),
        preview_frames: Optional[str] = typer.Option(
            None,
            help=option_help(
                "With --preview: the frames to preview, indices among the selected frames, e.g. 0,40,80.",
                default="one per chunk",
            ),
        ),
        checkpoint_every: Optional[int] = typer.Option(
            None,
            help=option_help(
                "Keep a checkpoint of the edited latents in the cache every this many steps; "
                "the same command resumes a stopped run from it. 0: none.",
                "checkpoint_every",
            ),
        ),
        config: Optional[Path] = typer.Option(
            None, "--config", help=option_help("Read defaults from this vedit.toml instead of ./vedit.toml.")
        ),
        quiet: bool = typer.Option(
            False, "--quiet", "-q", help=option_help("No progress or summary; warnings and errors only.")
        ),
        profile: bool = typer.Option(
            False,
            "--profile",
            help=option_help(
                "Time each component (read, encode, invert, keyframe and propagation passes, NN search, decode, write) "
                "with device synchronisation, and show it in the summary."
            ),
        ),
    ) -> None:
        """Edit CLIP so that it shows PROMPT."""
        from ..pipeline.edit import edit

        with user_errors():
            run_config = config_from_flags(
                config,
                prompt=prompt,
                source_prompt=source_prompt,
                negative_prompt=negative_prompt,
                editor=editor,
                propagator=propagator,
                engine=engine,
                engine_cache=engine_cache,
                nn_backend=nn_backend,
                model=model,
                revision=revision,
                steps=steps,
                inversion_steps=inversion_steps,
                strength=strength,
                start=start,
                guidance=guidance,
                pnp_f_t=pnp_f_t,
                pnp_attn_t=pnp_attn_t,
                chunk_size=chunk_size,
                keyframes=keyframes,
                max_joint_keyframes=max_joint_keyframes,
                inversion=inversion,
                force_inversion=force_inversion or None,
                seed=seed,
                size=size,
                frames=frames,
                max_frames=max_frames,
                allow_short=allow_short or None,
                fps=fps,
                keep_timestamps=keep_timestamps or None,
                output_size=output_size,
                device=device,
                dtype=dtype,
                batch_size=batch_size,
                postprocess=postprocess,
                cache_dir=cache_dir,
                cache_max_gb=cache_max_gb,
                no_cache=no_cache or None,
                eval=eval_,
                flow=flow,
                clip=clip_model,
                checkpoint_every=checkpoint_every,
                overwrite=overwrite or None,
            )
            target = output or Path(f"{clip.stem if clip.suffix else clip.name}-edited.mp4")
            if preview_frames is not None and not preview:
                raise ConfigError("--preview-frames chooses the frames of a preview: add --preview")
            if preview:
                from ..pipeline.preview import preview as run_preview
                from ..pipeline.preview import preview_path, summary_rows

                sheet = target if target.suffix.lower() == ".png" else preview_path(target)
                with reporting(quiet) as reporter:
                    looked = run_preview(clip, sheet, run_config, reporter=reporter, preview_frames=preview_frames)
                if not quiet:
                    out_console.print(rows_table(summary_rows(looked)))
                return
            with reporting(quiet) as reporter:
                result = edit(clip, target, run_config, reporter=reporter, profile=profile)
        if not quiet:
            out_console.print(summary_table(result, run_config))

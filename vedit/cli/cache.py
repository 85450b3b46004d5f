"""``vedit cache``: list, remove and prune cached inversions, annotations and the checkpoints of stopped runs."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from ..config import RunConfig, check_number
from ..errors import ConfigError
from .output import out_console, user_errors

CHECKPOINT_DAYS = 30.0  # vedit cache prune: checkpoints of stopped runs older than this go


def _print_checkpoints(entries, describe_age) -> None:
    """The checkpoints of stopped runs, oldest first: the same command resumes each."""
    table = Table("checkpoint", "clip", "prompt", "editor", "frames", "size", "step", "MB", "written")
    for column in table.columns:
        column.overflow = "fold"
    for entry in entries:
        m = entry.metadata
        table.add_row(
            Text(entry.key[:12]),
            Text("(unreadable)" if "error" in m else m.get("source", "?")),
            Text(repr(m.get("prompt", ""))),
            Text(m.get("editor", "?")),
            Text(m.get("frames", "?")),
            Text(f"{m.get('width', '?')}x{m.get('height', '?')}"),
            Text(f"{m.get('step', '?')}/{m.get('steps', '?')}"),
            Text(f"{entry.size_bytes / 2**20:.1f}"),
            Text(describe_age(entry.modified)),
        )
    out_console.print(table)
    total = sum(e.size_bytes for e in entries)
    out_console.print(
        f"{len(entries)} checkpoint{'s' if len(entries) != 1 else ''} of stopped runs, {total / 2**20:.1f} MB "
        f"(the same command resumes each; 'vedit cache clear' removes them)",
        markup=False,
        soft_wrap=True,
    )


def _print_annotations(entries, root) -> None:
    """One line for the cached annotations: how many, how large, where."""
    total = sum(e.size_bytes for e in entries)
    out_console.print(
        f"{len(entries)} cached annotation{'s' if len(entries) != 1 else ''} (control frames), {total / 2**20:.1f} MB "
        f"in {root}",
        markup=False, soft_wrap=True,
    )  # fmt: skip


def add_to(app: typer.Typer) -> None:
    """Add ``vedit cache`` (list, rm, prune, clear) to ``app``."""
    cache_app = typer.Typer(
        help="Manage the inversion cache, the cached annotations and the checkpoints of stopped runs.",
        no_args_is_help=True,
    )
    app.add_typer(cache_app, name="cache")

    @cache_app.command("list")
    def cache_list(cache_dir: Optional[str] = typer.Option(None, help="Cache folder.")) -> None:
        """List cached inversions, least recently used first, with the clip each came from, checkpoints of \
stopped runs, and the cached annotations' total."""
        from rich.text import Text

        from ..cache.annotations import AnnotationCache
        from ..cache.checkpoints import CheckpointStore
        from ..cache.files import describe_age, gb_to_bytes
        from ..cache.inversions import InversionCache

        with user_errors():
            cache = InversionCache(cache_dir)
            entries = cache.entries()
            checkpoints = CheckpointStore(cache_dir).entries()
            annotations = AnnotationCache(cache_dir)
            annotated = annotations.entries()
        if checkpoints:
            _print_checkpoints(checkpoints, describe_age)
        if annotated:
            _print_annotations(annotated, annotations.root)
        if not entries:
            out_console.print(f"no cached inversions in {cache.root}", markup=False, soft_wrap=True)
            return
        table = Table("key", "clip", "content", "frames", "size", "model", "source prompt", "steps", "MB", "used")
        for column in table.columns:
            column.overflow = "fold"  # a cut path, prompt or key would be useless; fold it instead
        for entry in entries:
            m = entry.metadata
            unreadable = "error" in m
            # Text(...) everywhere: paths, prompts and model ids are shown as written, never as rich markup.
            table.add_row(
                Text(entry.key[:12]),
                Text("(unreadable)" if unreadable else entry.source or "?"),
                Text(entry.content or "?"),
                Text(m.get("frames", "?")),
                Text(f"{m.get('width', '?')}x{m.get('height', '?')}"),
                Text(m.get("model", "?")),
                Text(repr(m.get("source_prompt", ""))),
                Text(f"{m.get('inversion_steps', '?')}/{m.get('steps', '?')}"),
                Text(f"{entry.size_bytes / 2**20:.1f}"),
                Text(describe_age(entry.modified)),
            )
        out_console.print(table)
        total = sum(e.size_bytes for e in entries)
        cap = RunConfig.cache_max_gb
        share = f" ({100 * total / gb_to_bytes(cap):.0f}%)" if cap > 0 else ""
        out_console.print(
            f"{len(entries)} entries, {total / 2**20:.1f} MB in {cache.root}; "
            f"the default cap (--cache-max-gb) is {cap:g} GB{share}",
            markup=False,
            soft_wrap=True,
        )

    @cache_app.command("rm")
    def cache_rm(
        key: str = typer.Argument(
            ..., help="An entry's key as 'vedit cache list' shows it, or any unique start of it."
        ),
        cache_dir: Optional[str] = typer.Option(None, help="Cache folder."),
    ) -> None:
        """Delete one cached inversion, or one checkpoint of a stopped run."""
        from ..cache.checkpoints import CheckpointStore
        from ..cache.inversions import InversionCache

        with user_errors():
            cache = InversionCache(cache_dir)
            wanted = key.strip().removesuffix("…").removesuffix(".safetensors").lower()
            store = CheckpointStore(cache_dir)
            kept = [entry for entry in store.entries() if wanted and entry.key.startswith(wanted)]
            inversions = [entry for entry in cache.entries() if wanted and entry.key.startswith(wanted)]
            if kept and not inversions:
                if len(kept) > 1:
                    raise ConfigError(f"{wanted!r} is the start of {len(kept)} checkpoints' keys; give more of the key")
                store.remove(kept[0].key)
                out_console.print(
                    f"removed checkpoint {kept[0].key} of {kept[0].metadata.get('source', '?')} "
                    f"({kept[0].size_bytes / 2**20:.1f} MB)",
                    markup=False, soft_wrap=True,
                )  # fmt: skip
                return
            entry = cache.find(key)
            cache.remove(entry)
        clip = f" of {entry.source}" if entry.source else ""
        out_console.print(
            f"removed cached inversion {entry.key}{clip} ({entry.size_bytes / 2**20:.1f} MB)",
            markup=False,
            soft_wrap=True,
        )

    @cache_app.command("prune")
    def cache_prune(
        max_gb: float = typer.Option(
            RunConfig.cache_max_gb,
            "--max-gb",
            help="Delete least recently used inversions until the cache holds at most this much, and annotations "
            "likewise, counted apart.",
        ),
        checkpoint_days: float = typer.Option(
            CHECKPOINT_DAYS,
            "--checkpoint-days",
            help="Also delete checkpoints of stopped runs last written more than this many days ago (0: all of them).",
        ),
        cache_dir: Optional[str] = typer.Option(None, help="Cache folder."),
    ) -> None:
        """Shrink the cache: least recently used inversions and annotations down to a size, and old checkpoints."""
        from ..cache.annotations import AnnotationCache
        from ..cache.checkpoints import CheckpointStore
        from ..cache.files import gb_to_bytes
        from ..cache.inversions import InversionCache

        with user_errors():
            check_number(max_gb, "--max-gb", 0.0)
            check_number(checkpoint_days, "--checkpoint-days", 0.0)
            cache = InversionCache(cache_dir)
            files, freed = cache.prune(gb_to_bytes(max_gb))
            left = cache.entries()
            store = CheckpointStore(cache_dir)
            kept_files, kept_freed = store.prune(checkpoint_days * 86400.0)
            kept_left = store.entries()
            annotations = AnnotationCache(cache_dir)
            annotated = annotations.entries()
            if annotated:
                annotated_files, annotated_freed = annotations.prune(gb_to_bytes(max_gb))
                annotated_left = annotations.entries()
        out_console.print(
            f"removed {files} cached inversions ({freed / 2**20:.1f} MB); "
            f"{len(left)} left, {sum(e.size_bytes for e in left) / 2**20:.1f} MB",
            markup=False,
        )
        if annotated:
            out_console.print(
                f"removed {annotated_files} cached annotations ({annotated_freed / 2**20:.1f} MB); "
                f"{len(annotated_left)} left, {sum(e.size_bytes for e in annotated_left) / 2**20:.1f} MB",
                markup=False,
            )
        plural = "s" if kept_files != 1 else ""
        out_console.print(
            f"removed {kept_files} checkpoint{plural} older than {checkpoint_days:g} days "
            f"({kept_freed / 2**20:.1f} MB); {len(kept_left)} left",
            markup=False,
        )

    @cache_app.command("clear")
    def cache_clear(cache_dir: Optional[str] = typer.Option(None, help="Cache folder.")) -> None:
        """Delete every cached inversion, every cached annotation and every checkpoint of a stopped run."""
        from ..cache.annotations import AnnotationCache
        from ..cache.checkpoints import CheckpointStore
        from ..cache.inversions import InversionCache

        with user_errors():
            files, freed = InversionCache(cache_dir).clear()
            annotated, annotated_bytes = AnnotationCache(cache_dir).clear()
            kept, kept_bytes = CheckpointStore(cache_dir).clear()
        out_console.print(
            f"removed {files} cached inversions ({freed / 2**20:.1f} MB), {annotated} cached annotations "
            f"({annotated_bytes / 2**20:.1f} MB) and {kept} checkpoint{'s' if kept != 1 else ''} "
            f"({kept_bytes / 2**20:.1f} MB)",
            markup=False,
        )

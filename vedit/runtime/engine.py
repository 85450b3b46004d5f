"""Engines: what turns a UNet pass module into the callable a run uses, and the on-disk cache
of what they build.

An engine plugin implements::

    name: str
    description: str
    dynamic_batch: bool            # optional: one build serves every batch size in target.batches
    unavailable_reason() -> str | None            # optional: why it cannot run here (missing library)
    build(module, example, target) -> callable    # callable(*inputs) returns what module(*inputs) does

``module`` is one of :mod:`vedit.method.passes`' modules, ``example`` a tuple of input tensors of the
shape it will be called with, and ``target`` a :class:`BuildTarget` with the pass's name, the
batch sizes it must serve, the device, precision, the engine cache and the key of the weights.
The runner (:class:`Passes`) asks for one build per pass and shape (per pass, for engines with
``dynamic_batch``) and falls back along the user's engine list when a build or its first call
fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from ..cache.checksums import file_digest, file_sha256
from ..config import option_value
from ..errors import PluginError
from ..method.inversion import cache_root
from ..method.passes import PASS_VERSION, BoundedKeyframePass, FramesPass, KeyframePass, PassModule, PlainPass, PropagationPass
from ..method.unet import CallContext, ControlledUNet

# Where built engines were kept by default before they moved into the cache folder: the working directory's
# engines/. A build into the new default says once if that folder holds entries (they are not used).
EARLIER_ENGINE_CACHE = Path("engines")


class EngineError(PluginError):
    """An engine the user asked for alone cannot build or run a pass (exit 5)."""


# --------------------------------------------------------------------------------------------
# The engine cache


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    engine: str
    pass_name: str
    model: str
    parts: dict[str, str]
    bytes: int
    created: float


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class EngineCache:
    """Built engines on disk, one folder per entry: ``<pass>-<engine>-<slot>/`` holding the
    artefacts and ``entry.json`` (every key part; each file's checksum, sha256, size and
    modification time).

    The *slot* names what an entry is for (weights, pass, engine, shapes or profile, precision);
    the *key* adds what it was built with (engine library, torch and pass code versions, the
    GPU's compute capability). An entry whose key differs is stale, one whose files do not hash
    to what was recorded (or that fails to load) is corrupt: both are rebuilt with a one-line
    message, never loaded. Entries are built in a private folder and renamed into place, so a
    reader never sees half an entry and two processes building the same one both succeed.
    """

    META = "entry.json"
    _earlier_said: set[Path] = set()  # earlier folders already mentioned in this process

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        message: Callable[[str], None] | None = None,
        earlier: str | os.PathLike | None = None,
    ):
        self.root = Path(root).expanduser()
        self.message = message or (lambda text: None)
        # A folder that held this cache's entries before (the default one moved): said once, at the first build.
        self.earlier = None if earlier is None else Path(earlier)

    @classmethod
    def for_options(
        cls,
        engine_cache: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        *,
        message: Callable[[str], None] | None = None,
    ) -> "EngineCache":
        """The folder ``engine_cache`` (``--engine-cache``) names, else the default: ``engines`` in the cache
        folder (``cache_dir``, ``$VEDIT_CACHE_DIR`` or ``~/.cache/vedit``), beside the inversions."""
        if engine_cache:
            return cls(engine_cache, message=message)
        return cls(cache_root(cache_dir) / "engines", message=message, earlier=EARLIER_ENGINE_CACHE)

    def _mention_earlier(self) -> None:
        """Say, once per process, that the entries of the folder that used to be the default are not used."""
        earlier = self.earlier
        if earlier is None or earlier.resolve() == self.root.resolve() or earlier.resolve() in self._earlier_said:
            return
        with contextlib.suppress(OSError):
            if any((folder / self.META).is_file() for folder in earlier.iterdir()):
                self._earlier_said.add(earlier.resolve())
                self.message(
                    f"engine cache: built engines are kept in {self.root} now, no longer in {earlier}; the ones built "
                    f"there are not used ({option_value('engine_cache', str(earlier))} uses them)"
                )

    @staticmethod
    def slot(parts: dict[str, str], identity: Sequence[str]) -> str:
        text = json.dumps({k: parts[k] for k in identity if k in parts}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @staticmethod
    def key(parts: dict[str, str]) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def folder(self, parts: dict[str, str], identity: Sequence[str]) -> Path:
        return self.root / f"{parts['pass']}-{parts['engine']}-{self.slot(parts, identity)}"

    def _check(self, folder: Path, parts: dict[str, str]) -> str | None:
        """Why the entry in ``folder`` cannot be used (None when it can)."""
        try:
            meta = json.loads((folder / self.META).read_text(encoding="utf-8"))
            recorded = meta["parts"]
            files = meta["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return "corrupt (its entry.json is missing or unreadable)"
        if self.key(recorded) != self.key(parts):
            changed = sorted(k for k in set(recorded) | set(parts) if recorded.get(k) != parts.get(k))
            what = ", ".join(f"{k} {recorded.get(k, '-')} → {parts.get(k, '-')}" for k in changed[:3])
            return f"stale ({what})"
        for name, recorded_file in files.items():
            file = folder / name
            try:
                stat = file.stat()
            except OSError:
                return f"corrupt ({name} is missing)"
            if stat.st_size != recorded_file["size"]:
                return f"corrupt ({name} is {stat.st_size} bytes, {recorded_file['size']} were written)"
            # Hashed on every load, since bytes can change with the modification time left as it
            # was: with the checksum (CRC-32, a third of a second per GB from the page cache); an
            # entry built before entries recorded it, with its SHA-256 (about twice as long).
            if "crc32" in recorded_file:
                sound = file_digest(file) == recorded_file["crc32"]
            else:
                sound = file_sha256(file) == recorded_file.get("sha256")
            if not sound:
                return f"corrupt ({name} does not match its recorded hash)"
        return None

    def load_or_build(
        self,
        parts: dict[str, str],
        identity: Sequence[str],
        build: Callable[[Path], None],
        load: Callable[[Path], Any],
        *,
        label: str,
    ) -> Any:
        """Load the entry for ``parts``, building it first when absent, stale or corrupt."""
        folder = self.folder(parts, identity)
        if folder.exists():
            problem = self._check(folder, parts)
            if problem is None:
                try:
                    return load(folder)
                except Exception as error:  # a file that hashes right but does not load
                    problem = f"corrupt (it does not load: {str(error).splitlines()[0] if str(error) else type(error).__name__})"
            self.message(f"engine cache: {label} in {folder} is {problem}; rebuilding")
        self._mention_earlier()
        # A build can take minutes (a TorchScript trace on the CPU, a TensorRT plan): say so, and when it ends.
        began = time.perf_counter()
        batches = f" ({batches_text(parts['batches'].split(','))})" if parts.get("batches") else ""
        self.message(f"building the {label}{batches}; the engine cache keeps it for later runs")
        self._build(folder, parts, build)
        self.message(f"built the {label} in {time.perf_counter() - began:.1f} s")
        return load(folder)

    def _build(self, folder: Path, parts: dict[str, str], build: Callable[[Path], None]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        scratch = self.root / f".build-{folder.name}-{uuid.uuid4().hex[:8]}"
        scratch.mkdir()
        try:
            build(scratch)
            files = {
                p.name: {
                    "crc32": file_digest(p), "sha256": file_sha256(p), "size": p.stat().st_size,
                    "mtime_ns": p.stat().st_mtime_ns,
                }  # fmt: skip
                for p in sorted(scratch.iterdir())
                if p.is_file()
            }
            meta = {"parts": parts, "files": files, "created": time.time()}
            (scratch / self.META).write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
            self._install(scratch, folder, parts)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _install(self, scratch: Path, folder: Path, parts: dict[str, str]) -> None:
        """Rename ``scratch`` into place; a good entry another process installed meanwhile is kept."""
        for _ in range(3):
            try:
                os.rename(scratch, folder)
                return
            except OSError:  # the folder exists: someone else's entry, or the stale one we replace
                if self._check(folder, parts) is None:
                    return
                old = folder.with_name(f".old-{folder.name}-{uuid.uuid4().hex[:8]}")
                with contextlib.suppress(OSError):
                    os.rename(folder, old)
                shutil.rmtree(old, ignore_errors=True)
        raise OSError(f"cannot install {folder}")

    def entries(self) -> list[CacheEntry]:
        found = []
        if not self.root.is_dir():
            return found
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            try:
                meta = json.loads((folder / self.META).read_text(encoding="utf-8"))
                parts = dict(meta["parts"])
                created = float(meta.get("created", 0))
            except (OSError, ValueError, KeyError, TypeError):
                parts, created = {"engine": "?", "pass": "?", "model": "?"}, 0.0
            found.append(
                CacheEntry(folder, parts.get("engine", "?"), parts.get("pass", "?"), parts.get("model", "?"), parts,
                           _folder_bytes(folder), created)
            )  # fmt: skip
        return found

    def clear(self) -> int:
        """Remove every entry (and leftovers of interrupted builds); returns the bytes freed."""
        freed = 0
        if not self.root.is_dir():
            return 0
        for folder in self.root.iterdir():
            if folder.is_dir():
                freed += _folder_bytes(folder)
                shutil.rmtree(folder, ignore_errors=True)
        return freed


def batches_text(batches: Sequence[int | str]) -> str:
    """The batch sizes a build serves, as a message says them: ``batch 4``, ``batches 9, 12``."""
    return f"batch {batches[0]}" if len(batches) == 1 else f"batches {', '.join(str(b) for b in batches)}"


def torch_key_parts(device: torch.device) -> dict[str, str]:
    """Key parts every engine shares: torch's version and, on a GPU, its compute capability."""
    parts = {"torch": torch.__version__, "device": device.type}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        parts["compute_capability"] = f"{major}.{minor}"
    return parts


# --------------------------------------------------------------------------------------------
# Build targets and the runner


@dataclass
class BuildTarget:
    """What an engine is asked to build: one pass, for the given batch sizes, on one device."""

    pass_name: str
    batches: tuple[int, ...]  # every batch size the callable must serve (one, for static engines)
    device: torch.device
    dtype: torch.dtype
    fingerprint: str  # of the model weights
    cache: EngineCache
    message: Callable[[str], None]
    layers: str = ""  # the injection layers the pass was built with (part of the key)

    def parts(self, engine: str, shapes: Iterable[Sequence[int]], **extra: str) -> dict[str, str]:
        """Every key part of an entry for this target built by ``engine``."""
        return {
            "engine": engine,
            "pass": self.pass_name,
            "pass_version": str(PASS_VERSION),
            "model": self.fingerprint,
            "layers": self.layers,
            "shapes": json.dumps([list(s) for s in shapes]),
            "batches": ",".join(str(b) for b in self.batches),
            "dtype": str(self.dtype).removeprefix("torch."),
            **torch_key_parts(self.device),
            **extra,
        }

    IDENTITY = ("engine", "pass", "model", "layers", "shapes", "batches", "dtype", "device")


def engine_chain(requested: str, device: torch.device) -> tuple[list[Any], bool, list[str]]:
    """The engines to try in order for ``--engine`` (a name, ``auto`` or a comma-separated list),
    whether a failure is an error (one engine named alone) rather than a fallback, and one note
    per engine of the list skipped because it cannot run here. The chain always ends at eager."""
    from .. import plugins

    names = [n.strip() for n in requested.split(",") if n.strip()] or ["auto"]
    strict = len(names) == 1 and names[0] != "auto"
    if strict:
        return [plugins.get("engine", names[0])], True, []  # unknown or unusable: one line, exit 5
    items = plugins.registered("engine")
    expanded: list[str] = []
    for name in names:
        if name == "auto":
            rule = plugins.get_plugin_manager().hook.choose_engine(device=device) or "eager"
            expanded += [n.strip() for n in rule.split(",") if n.strip()]
        else:
            expanded.append(name)
    chain: list[Any] = []
    notes: list[str] = []
    for name in expanded:
        if name not in items:
            known = ", ".join(sorted(items))
            raise PluginError(f"unknown engine {name!r} in {option_value('engine', requested)}; available: {known}")
        reason = items[name].unavailable_reason()
        if reason:
            if "auto" not in names or name in names:
                notes.append(f"engine {name!r} cannot run here ({reason}); skipping it")
            continue
        if name not in [e.name for e in chain]:
            chain.append(items[name].item)
    if "eager" not in [e.name for e in chain]:
        chain.append(plugins.get("engine", "eager"))
    return chain, False, notes


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


class Passes:
    """Every UNet call of a run, through the chosen engines.

    ``plain``, ``frames``, ``keyframe`` and ``propagate`` run the pass modules of
    :mod:`vedit.method.passes`; ``custom`` runs a propagator plugin's own attention handler eagerly.
    UNet image-forwards are counted by kind.
    """

    def __init__(
        self,
        model: Any,
        engines: Sequence[Any],
        *,
        strict: bool = False,
        conv_layers: tuple[str, ...] = (),
        qk_layers: tuple[str, ...] = (),
        nearest: Any = None,
        cache: EngineCache | None = None,
        message: Callable[[str], None] | None = None,
        warn: Callable[[str], None] | None = None,
        batches: dict[str, Sequence[int]] | None = None,
    ):
        self.model = model
        self.engines = list(engines)
        self.strict = strict
        self.message = message or (lambda text: None)
        self.warn = warn or self.message
        self.cache = cache or EngineCache.for_options(message=self.message)
        self.controlled = ControlledUNet(model.unet, conv_layers=conv_layers, qk_layers=qk_layers)
        self.layers_key = json.dumps([list(conv_layers), list(qk_layers)])
        # A nearest-neighbour backend that is not traceable runs inside the propagation pass in Python.
        self.nearest = None if nearest is None or getattr(nearest, "traceable", False) else nearest.nearest
        self.nearest_name = getattr(nearest, "name", "torch")
        self.batches = {k: tuple(sorted(set(v))) for k, v in (batches or {}).items()}
        self.forwards: Counter[str] = Counter()
        self.used: dict[str, str] = {}  # pass -> engine that runs it
        self._modules: dict[str, PassModule] = {}
        self._callables: dict[tuple, Callable] = {}
        self._failed: dict[str, set[str]] = {}
        self._said: set[str] = set()

    # lifetime ------------------------------------------------------------------------------
    def __enter__(self) -> "Passes":
        self.controlled.install()
        return self

    def __exit__(self, *exc) -> None:
        self.controlled.uninstall()

    @property
    def layers(self):
        return self.controlled.layers

    def _say_once(self, text: str) -> None:
        if text not in self._said:
            self._said.add(text)
            self.warn(text)

    # building ------------------------------------------------------------------------------
    def module(self, name: str) -> PassModule:
        if name not in self._modules:
            make = {
                "plain": PlainPass, "frames": FramesPass, "keyframe": KeyframePass,
                "keyframe_bounded": BoundedKeyframePass,
            }.get(name)  # fmt: skip
            module = make(self.controlled) if make else PropagationPass(self.controlled, self.nearest)
            self._modules[name] = module.eval()
        return self._modules[name]

    def _target(self, name: str, batches: tuple[int, ...]) -> BuildTarget:
        return BuildTarget(
            pass_name=name, batches=batches, device=self.model.device, dtype=self.model.dtype,
            fingerprint=self.model.fingerprint, cache=self.cache, message=self.message, layers=self.layers_key,
        )  # fmt: skip

    def _callable(self, name: str, inputs: tuple[torch.Tensor, ...]) -> Callable:
        batch = inputs[0].shape[0]
        shapes = tuple(tuple(x.shape) for x in inputs)
        key = (name, shapes)
        if key in self._callables:
            return self._callables[key]
        module = self.module(name)
        failed = self._failed.setdefault(name, set())
        for engine in self.engines:
            if engine.name in failed:
                continue
            if engine.name != "eager" and name == "propagation" and self.nearest is not None:
                self._say_once(
                    f"nn backend {self.nearest_name!r} runs in Python, so the propagation pass runs eagerly "
                    f"(the torch backend compiles with it)"
                )
                continue
            dynamic = getattr(engine, "dynamic_batch", False)
            batches = tuple(sorted(set(self.batches.get(name, ())) | {batch})) if dynamic else (batch,)
            try:
                fn = engine.build(module, inputs, self._target(name, batches))
                outputs = fn(*inputs)  # the first call is part of the build: it may fail too
            except Exception as error:
                if self.strict:
                    raise EngineError(f"engine {engine.name!r} cannot run the {name} pass: {_first_line(error)}") from None
                failed.add(engine.name)
                self.warn(f"engine {engine.name!r} cannot run the {name} pass ({_first_line(error)}); trying the next")
                continue
            self.used[name] = engine.name
            self._callables[key] = _Primed(fn, inputs, outputs)
            return self._callables[key]
        # Not reached for a chain that ends at eager, unless eager itself fails (a real bug).
        raise EngineError(f"no engine could run the {name} pass; tried {', '.join(e.name for e in self.engines)}")

    def _run(self, name: str, kind: str, inputs: tuple[torch.Tensor, ...]):
        self.forwards[kind] += inputs[0].shape[0]
        return self._callable(name, inputs)(*inputs)

    # the passes ---------------------------------------------------------------------------
    def plain(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, *, kind: str = "plain") -> torch.Tensor:
        return self._run("plain", kind, (latents, t, text))

    def frames(self, latents, t, text, flags, *, kind: str = "frames") -> torch.Tensor:
        return self._run("frames", kind, (latents, t, text, flags))

    def keyframe(
        self, latents, t, text, flags, partners: torch.Tensor | None = None, *, kind: str = "keyframes"
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The keyframe pass; with ``partners`` (K, M), its bounded form (``--max-joint-keyframes``)."""
        if partners is None:
            out = self._run("keyframe", kind, (latents, t, text, flags))
        else:
            out = self._run("keyframe_bounded", kind, (latents, t, text, flags, partners))
        return out[0], list(out[1:])

    def propagate(self, latents, t, text, flags, weights, records: Sequence[torch.Tensor], *, kind: str = "propagation"):
        return self._run("propagation", kind, (latents, t, text, flags, weights, *records))

    def custom(self, latents, t, text, ctx: CallContext, *, kind: str) -> torch.Tensor:
        """A plugin's own attention handler: Python inside the UNet, so always eager."""
        if any(e.name != "eager" for e in self.engines[:1]):
            self._say_once(
                f"attention handler {type(ctx.attention).__name__} is Python code, so its UNet calls run eagerly"
            )
        self.forwards[kind] += latents.shape[0]
        return self.controlled.run(latents, t, text, ctx)

    def prepare(self, name: str, inputs: tuple[torch.Tensor, ...]) -> Callable:
        """The callable that runs pass ``name`` on inputs shaped like ``inputs``, built (or loaded
        from the engine cache) now; the first call with these very tensors returns the build's
        own result."""
        return self._callable(name, inputs)


class _Primed:
    """The built callable; the outputs of its first call (made while building) answer that call."""

    def __init__(self, fn: Callable, inputs: tuple[torch.Tensor, ...], outputs: Any):
        self.fn = fn
        self._first: tuple | None = (inputs, outputs)

    def __call__(self, *inputs: torch.Tensor):
        first, self._first = self._first, None
        if first is not None and len(first[0]) == len(inputs) and all(a is b for a, b in zip(first[0], inputs)):
            return first[1]
        return self.fn(*inputs)

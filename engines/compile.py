"""Engine ``compile``: ``torch.compile`` of each pass, whole-graph, static shapes.

On CUDA it captures CUDA graphs (``mode="reduce-overhead"``), so a step's many small kernels
launch as one; elsewhere inductor's default mode. Each pass and shape compiles once per
process: everything that changes between steps and chunks is a tensor input, so no step or
chunk recompiles (``tests/runtime/test_runner.py`` reads dynamo's counters). ``--compile-mode``
(or, when it is not given, ``VEDIT_COMPILE_MODE``) overrides the mode (``default``,
``reduce-overhead``, ``max-autotune``, ...).
"""

from __future__ import annotations

import os
import time

import torch

import vedit
from vedit.plugins.hookspecs import hookimpl
from vedit.runtime.engine_cache import batches_text

# Every model and test builds new pass modules, and dynamo counts each as a recompilation of
# the same forward code; past the limit it would fall back to eager without a word. A higher
# limit, and a failure (which the runner reports and falls back from) instead of silence.
RECOMPILE_LIMIT = 256


def compile_mode(device: torch.device, asked: str | None = None) -> str | None:
    """torch.compile's mode on ``device``: ``asked`` (the option), else ``VEDIT_COMPILE_MODE``, else by device."""
    mode = asked or os.environ.get("VEDIT_COMPILE_MODE")
    if mode:
        return None if mode == "default" else mode
    return "reduce-overhead" if device.type == "cuda" else None


class Compile:
    name = "compile"
    description = "torch.compile of each pass (inductor; CUDA graphs on GPUs), compiled once per pass and shape"

    class Options(vedit.Options):
        mode: str | None = vedit.option(
            None,
            help="torch.compile mode: default, reduce-overhead, max-autotune, ... "
            "(unset: $VEDIT_COMPILE_MODE, else reduce-overhead on CUDA and default elsewhere).",
            affects_output=False,
        )

    def build(self, module, example, target):
        import torch._dynamo

        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT)
        config.fail_on_recompile_limit_hit = True
        options = getattr(self, "options", None)
        mode = compile_mode(target.device, options.mode if options is not None else None)
        compiled = torch.compile(module, fullgraph=True, dynamic=False, mode=mode)
        # Both modes capture CUDA graphs on a GPU, whose outputs the next replay overwrites.
        graphs = target.device.type == "cuda" and mode in ("reduce-overhead", "max-autotune")
        # torch.compile compiles at the first call, which the runner makes at once: it can take
        # minutes, so say when it starts and how long it took.
        what = f"the {target.pass_name} pass ({batches_text(target.batches)}) with torch.compile"
        target.message(f"compiling {what}; once per process")
        compiling = [time.perf_counter()]

        def run(*inputs):
            with torch.inference_mode():
                if graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                out = compiled(*inputs)
                if graphs:  # a CUDA graph's outputs are overwritten by its next replay
                    out = tuple(o.clone() for o in out) if isinstance(out, tuple) else out.clone()
            if compiling:
                target.message(f"compiled {what} in {time.perf_counter() - compiling.pop():.1f} s")
            return out

        return run


@hookimpl
def register_engines(register):
    register(Compile())

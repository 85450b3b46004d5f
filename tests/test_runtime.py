"""The allocator settings vedit applies to its process (vedit.runtime.allocator): by its command line and its
Python API's first edit, inversion or preview, never on import; and `vedit bench calls`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vedit.runtime import allocator as runtime

GLIBC = runtime.glibc_version()
needs_glibc = pytest.mark.skipif(GLIBC is None, reason="the allocator settings apply to glibc only")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any allocator setting of the user's, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in runtime.USER_MALLOC_VARS and k not in (runtime.ENV, "LD_PRELOAD", "GLIBC_TUNABLES")}  # fmt: skip
    return {**env, **extra}


# ------------------------------------------------------------------------------ the decision


def test_plan_applies_the_settings_on_glibc_by_default():
    settings, reason = runtime.plan({}, "2.36")
    assert settings == {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 1 << 30}
    assert "reuse" in reason
    assert runtime.plan({runtime.ENV: "auto"}, "2.36")[0] == settings
    assert runtime.plan({runtime.ENV: " AUTO "}, "2.36")[0] == settings


def test_plan_leaves_the_allocator_alone_when_told_to():
    settings, reason = runtime.plan({runtime.ENV: "system"}, "2.36")
    assert settings == {}
    assert "VEDIT_ALLOCATOR=system" in reason


@pytest.mark.parametrize(
    "env, named",
    [
        ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "MALLOC_MMAP_THRESHOLD_"),
        ({"MALLOC_TRIM_THRESHOLD_": "4294967296"}, "MALLOC_TRIM_THRESHOLD_"),
        ({"MALLOC_ARENA_MAX": "2"}, "MALLOC_ARENA_MAX"),
        ({"MALLOC_MMAP_MAX_": "0"}, "MALLOC_MMAP_MAX_"),
        ({"MALLOC_TOP_PAD_": "0"}, "MALLOC_TOP_PAD_"),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, "GLIBC_TUNABLES"),
        ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "jemalloc"),
        ({"LD_PRELOAD": "/opt/lib/libtcmalloc_minimal.so.4"}, "tcmalloc"),
    ],
)
def test_plan_never_overrides_what_the_user_set(env, named):
    settings, reason = runtime.plan(env, "2.36")
    assert settings == {}
    assert named in reason and "user" in reason
    # ... even with VEDIT_ALLOCATOR=auto said explicitly
    assert runtime.plan({**env, runtime.ENV: "auto"}, "2.36")[0] == {}


def test_plan_ignores_settings_that_are_not_the_allocators():
    assert runtime.plan({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F", "MALLOC_ARENA_MAX": ""}, "2.36")[0]
    assert runtime.plan({"LD_PRELOAD": "/usr/lib/libfakeroot.so"}, "2.36")[0]


def test_plan_does_nothing_off_glibc_or_under_another_allocator_or_for_an_unknown_mode():
    assert runtime.plan({}, None) == ({}, "not glibc: allocator left as is")
    settings, reason = runtime.plan({}, "2.36", foreign="tcmalloc")
    assert settings == {} and "tcmalloc" in reason
    settings, reason = runtime.plan({runtime.ENV: "jemalloc"}, "2.36")
    assert settings == {} and "'jemalloc' is not one of auto, system" in reason


# ------------------------------------------------------------------------------ this process


def test_configure_allocator_is_idempotent_and_reports_what_it_did():
    first = runtime.configure_allocator()  # this process's first call, or an answer to an earlier one
    assert set(first) == {"mode", "allocator", "applied", "reason"}
    wanted, _ = runtime.plan(os.environ, GLIBC, runtime._foreign_allocator(runtime._libc()) if GLIBC else None)
    assert first["applied"] == wanted
    # a second call changes nothing and answers the same, whatever it is given
    again = runtime.configure_allocator({runtime.ENV: "system"})
    assert again == first
    again["applied"]["M_MMAP_MAX"] = 12345  # the answer is a copy
    assert runtime.allocator_settings() == first
    line = runtime.describe()
    assert (GLIBC or "") in line
    if first["applied"]:
        assert "M_MMAP_MAX=0" in line and "M_TRIM_THRESHOLD=1073741824" in line
    else:
        assert "left as is" in line


# ------------------------------------------------------------------------------ in a fresh process

# What a process does first: only import vedit, apply the settings, or run vedit's command line.
STARTS = {
    "import": "import vedit",
    "configure": "from vedit.runtime.allocator import configure_allocator; configure_allocator()",
    "cli": "from vedit.cli import main; sys.argv = ['vedit', '--version']\ntry: main()\nexcept SystemExit: pass",
}

# Allocates 64 MiB, touches it and frees it, five times, and counts the page faults of the last
# three: with the settings the freed memory is reused (no faults); without them glibc unmaps it at
# every free and every allocation faults in 16 384 fresh 4 KiB pages. (The first two rounds let
# the heap settle: a small allocation of another thread can land right after the first block.)
REUSE_PROBE = """
import ctypes, json, resource, sys
{start}
from vedit.runtime import allocator as runtime
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    libc.free(p)
print(json.dumps({"faults": sum(faults[2:]), "settings": runtime.allocator_settings()}))
"""

# The same with torch tensors, torch imported before vedit (as a program that uses both may do),
# fifteen rounds, the last three counted: glibc 2.36 serves torch's 64-byte-aligned requests with
# a few bytes of padding, so a freed block is reused once the small allocations made beside the
# first few have settled (about eight rounds); glibc as it comes unmaps it every time.
TORCH_PROBE = """
import json, resource
import torch
import vedit
from vedit.runtime import allocator as runtime
runtime.configure_allocator()
faults = []
for _ in range(15):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(1 << 24)  # 64 MiB
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del x
print(json.dumps({"faults": sum(faults[-3:]), "settings": runtime.allocator_settings()}))
"""

PAGES = 3 * (64 << 20) // os.sysconf("SC_PAGE_SIZE")  # what three unmapped rounds fault in


def run_probe(code: str, env: dict[str, str], start: str = "configure") -> dict:
    cmd = [sys.executable, "-c", code.replace("{start}", STARTS[start])]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@needs_glibc
def test_the_settings_stop_freed_memory_going_back_to_the_kernel():
    on = run_probe(REUSE_PROBE, clean_env())
    off = run_probe(REUSE_PROBE, clean_env(VEDIT_ALLOCATOR="system"))
    user = run_probe(REUSE_PROBE, clean_env(MALLOC_MMAP_THRESHOLD_="65536"))
    assert on["settings"]["applied"] == runtime.SETTINGS and on["settings"]["mode"] == "auto"
    assert on["faults"] < PAGES // 20  # reused: (almost) nothing faulted in
    assert off["settings"]["applied"] == {} and off["settings"]["mode"] == "system"
    assert off["faults"] >= PAGES * 0.9  # unmapped at free, every page faulted in again
    assert user["settings"]["applied"] == {} and "MALLOC_MMAP_THRESHOLD_" in user["settings"]["reason"]
    assert user["faults"] >= PAGES * 0.9


@needs_glibc
def test_import_vedit_leaves_the_allocator_alone():
    imported = run_probe(REUSE_PROBE, clean_env(), start="import")
    assert imported["settings"]["applied"] == {} and imported["settings"]["mode"] == "auto"
    assert "not configured in this process yet" in imported["settings"]["reason"]
    assert imported["faults"] >= PAGES * 0.9  # glibc as it comes: unmapped at free, faulted in again


@needs_glibc
def test_the_command_line_applies_the_settings():
    applied = run_probe(REUSE_PROBE, clean_env(), start="cli")
    assert applied["settings"]["applied"] == runtime.SETTINGS and applied["settings"]["mode"] == "auto"
    assert applied["faults"] < PAGES // 20


def test_the_first_edit_inversion_preview_or_batch_unit_applies_the_settings(monkeypatch):
    import vedit
    from vedit.batch import run as batch
    from vedit.config import RunConfig
    from vedit.errors import InputError
    from vedit.pipeline.preview import preview

    def failing(call):  # the clip is missing: each fails at once, after applying the settings
        def run():
            with pytest.raises(InputError):
                call()

        return run

    wanted, _ = runtime.plan(os.environ, GLIBC, runtime._foreign_allocator(runtime._libc()) if GLIBC else None)
    calls = {
        "edit": failing(lambda: vedit.edit("no-such-clip.mp4", "out.mp4", prompt="x", model="tiny")),
        "invert": failing(lambda: vedit.invert("no-such-clip.mp4", model="tiny")),
        "preview": failing(lambda: preview("no-such-clip.mp4", "sheet.png", prompt="x", model="tiny")),
        # what a batch's worker process runs: its model loads before the inversion starts
        "batch unit": lambda: batch.execute(batch.Unit("invert", 1, Path("no-such-clip.mp4"), RunConfig(model="tiny"))),
    }
    load_model, applied_at_load = batch._load, []
    monkeypatch.setattr(batch, "_load", lambda config: applied_at_load.append(runtime._settings) or load_model(config))
    for name, call in calls.items():
        monkeypatch.setattr(runtime, "_settings", None)  # as in a process that has only imported vedit
        assert runtime.allocator_settings()["applied"] == {}
        call()
        settings = runtime.allocator_settings()
        assert settings["applied"] == wanted and "not configured" not in settings["reason"], name
    assert len(applied_at_load) == 1 and applied_at_load[0] is not None  # before the worker's model loaded


@needs_glibc
def test_the_settings_reach_torch_tensors_even_when_torch_was_imported_first():
    on = run_probe(TORCH_PROBE, clean_env())
    off = run_probe(TORCH_PROBE, clean_env(VEDIT_ALLOCATOR="system"))
    assert on["settings"]["applied"] == runtime.SETTINGS
    assert on["faults"] < PAGES // 20
    assert off["faults"] >= PAGES * 0.9


def test_release_free_memory_answers_without_failing():
    assert runtime.release_free_memory() in (True, False)


# ------------------------------------------------------------------------------ vedit bench calls


def test_calls_suite_measures_both_paths_with_the_fix_off_and_on(tmp_path, monkeypatch):
    from vedit_bench.calls import run_calls_suite

    for name in (*runtime.USER_MALLOC_VARS, runtime.ENV):
        monkeypatch.delenv(name, raising=False)
    # the tiny UNet's calls take milliseconds on one thread, and can take seconds on a busy second core
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    save = tmp_path / "calls.json"
    rows = run_calls_suite(model="tiny", size="64x64", batch=2, repeats=1, device="cpu", dtype="fp32", save=str(save))
    assert [(r["allocator"], r["path"]) for r in rows] == [
        ("system", "plain"), ("system", "vedit"), ("auto", "plain"), ("auto", "vedit")]  # fmt: skip
    for row in rows:
        assert row["median_ms"] > 0 and row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        assert len(row["ms"]) == 1 and all(ms > 0 for ms in row["ms"])
        assert isinstance(row["faults_per_call"], int) and row["faults_per_call"] >= 0
        assert row["same_output"] is True and row["max_abs_diff"] == 0.0  # the same ε, bit for bit
        assert row["vs_plain"] > 0 and row["vs_system"] > 0
    by = {(r["allocator"], r["path"]): r for r in rows}
    assert by[("system", "plain")]["vs_plain"] == 1.0 and by[("system", "plain")]["vs_system"] == 1.0
    assert "left as is" in by[("system", "plain")]["settings"]
    if GLIBC:
        assert "M_MMAP_MAX=0" in by[("auto", "plain")]["settings"]
    saved = json.loads(save.read_text())
    assert saved["suite"] == "calls" and len(saved["rows"]) == 4
    assert saved["allocators"]["system"]["applied"] == {}


# ------------------------------------------------------------------------------ the plain pass's attention


def test_attention_is_one_fused_call_where_it_used_to_be_blocked(monkeypatch):
    """vedit's attention makes the very call diffusers' processor makes when a fused kernel runs
    (it used to split the queries into blocks on the CPU); it still blocks for the math fallback."""
    import torch
    import torch.nn.functional as F

    from vedit.method import attention

    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 4096, 8, generator=gen) for _ in range(3))  # 2048 queries a block before
    assert attention.MAX_SCORES_PER_BLOCK // (4096 * 2) < 4096
    sdpa = F.scaled_dot_product_attention
    calls = []
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(a[0].shape) or sdpa(*a, **kw))
    whole = sdpa(q, k, v)
    assert torch.equal(attention.attend(q, k, v), whole)
    assert calls == [q.shape]
    calls.clear()
    monkeypatch.setattr(attention, "_fused_kernel", lambda *args: False)  # as where only the math kernel runs
    assert torch.allclose(attention.attend(q, k, v), whole, atol=1e-6)
    assert calls == [torch.Size([1, 2, 2048, 8])] * 2

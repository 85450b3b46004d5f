"""The allocator settings vedit applies to its process (vedit.runtime.allocator): by its command line and its
Python API's first edit, inversion or preview, never on import; and giving freed memory back."""

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


@pytest.mark.slow
@needs_glibc
def test_the_command_line_applies_the_settings():
    applied = run_probe(REUSE_PROBE, clean_env(), start="cli")
    assert applied["settings"]["applied"] == runtime.SETTINGS and applied["settings"]["mode"] == "auto"
    assert applied["faults"] < PAGES // 20


def test_the_first_edit_inversion_preview_or_batch_unit_applies_the_settings(monkeypatch):
    import vedit
    from vedit.batch import workers as batch
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


@pytest.mark.slow
@needs_glibc
def test_the_settings_reach_torch_tensors_even_when_torch_was_imported_first():
    on = run_probe(TORCH_PROBE, clean_env())
    off = run_probe(TORCH_PROBE, clean_env(VEDIT_ALLOCATOR="system"))
    assert on["settings"]["applied"] == runtime.SETTINGS
    assert on["faults"] < PAGES // 20
    assert off["faults"] >= PAGES * 0.9


# Mallocs 200 MiB in 64 KiB chunks (below glibc's default mmap threshold: from the heap either way) with vedit's
# settings applied, touches and frees it: the settings keep the freed memory mapped (the heap's top is never
# trimmed below 1 GiB), so the resident size stays up until release_free_memory() hands it back.
RELEASE_PROBE = """
import ctypes, json, os
from vedit.runtime import allocator as runtime
runtime.configure_allocator()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
page = os.sysconf("SC_PAGE_SIZE")


def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * page


chunk, total = 64 << 10, 200 << 20
pointers = [libc.malloc(chunk) for _ in range(total // chunk)]
for p in pointers:
    ctypes.memset(p, 1, chunk)
held = rss()
for p in reversed(pointers):
    libc.free(p)
freed = rss()
released = runtime.release_free_memory()
print(json.dumps({"total": total, "held": held, "freed": freed, "after": rss(), "released": released,
                  "settings": runtime.allocator_settings()}))
"""


@needs_glibc
def test_release_free_memory_hands_the_memory_the_settings_keep_back_to_the_kernel():
    probe = run_probe(RELEASE_PROBE, clean_env())
    total = probe["total"]
    assert probe["settings"]["applied"] == runtime.SETTINGS
    assert probe["held"] - probe["freed"] < total // 10  # freed, but kept: the settings at work
    assert probe["released"] is True
    assert probe["freed"] - probe["after"] > total * 0.8, probe  # most of it handed back


def test_release_free_memory_is_false_off_glibc_and_leaves_libc_alone(monkeypatch):
    def no_libc():
        raise AssertionError("release_free_memory reached for malloc_trim off glibc")

    monkeypatch.setattr(runtime, "glibc_version", lambda: None)
    monkeypatch.setattr(runtime, "_libc", no_libc)
    assert runtime.release_free_memory() is False

"""The engine cache (vedit.runtime.engine_cache): stale, corrupt and pre-checksum entries rebuilt, two
builders of one entry, and where built engines are kept."""

from __future__ import annotations

import json
import threading
import zlib
from pathlib import Path

import pytest

from conftest import flip_byte
from helpers.engines import eager_outputs, passes_with, relative_error, sd  # noqa: F401  (fixtures, used by name)
from vedit.runtime.engine_cache import EngineCache


@pytest.mark.slow
def test_engine_cache_rebuilds_stale_and_corrupt_entries(sd, eager_outputs, tmp_path):
    inputs, expected = eager_outputs
    said: list[str] = []
    cache = EngineCache(tmp_path / "engines", message=said.append)

    def notes() -> list[str]:  # why an entry was rebuilt
        return [line for line in said if line.startswith("engine cache:")]

    run = lambda: passes_with(sd, "torchscript", cache, lambda p: p.plain(*inputs["plain"]))  # noqa: E731
    assert relative_error(run(), expected["plain"][0]) < 1e-4
    (entry,) = cache.entries()
    assert entry.pass_name == "plain" and entry.engine == "torchscript" and entry.parts["model"] == sd.fingerprint
    assert notes() == []
    assert said[0] == "building the torchscript plain pass (batch 8); the engine cache keeps it for later runs"
    assert said[1].startswith("built the torchscript plain pass in ") and len(said) == 2
    assert relative_error(run(), expected["plain"][0]) < 1e-4  # loaded, not rebuilt
    assert len(said) == 2  # and nothing said

    meta_path = entry.path / "entry.json"
    meta = json.loads(meta_path.read_text())
    meta["parts"]["torch"] = "1.0.0"  # built by another torch: stale
    meta_path.write_text(json.dumps(meta))
    assert relative_error(run(), expected["plain"][0]) < 1e-4
    assert len(notes()) == 1 and "stale" in notes()[0] and "torch 1.0.0" in notes()[0] and "rebuilding" in notes()[0]

    artefact = entry.path / "pass.pt"
    artefact.write_bytes(artefact.read_bytes()[:1000])  # truncated: corrupt
    assert relative_error(run(), expected["plain"][0]) < 1e-4
    assert len(notes()) == 2 and "corrupt" in notes()[1]
    assert len(cache.entries()) == 1 and cache.entries()[0].bytes > 100_000

    data = bytearray(artefact.read_bytes())  # same size, one byte flipped, mtime changed: hashed, corrupt
    data[len(data) // 2] ^= 0xFF
    artefact.write_bytes(bytes(data))
    assert relative_error(run(), expected["plain"][0]) < 1e-4
    assert len(notes()) == 3 and "does not match its recorded hash" in notes()[2]

    flip_byte(artefact, artefact.stat().st_size // 3)  # and with the modification time kept as it was
    assert relative_error(run(), expected["plain"][0]) < 1e-4
    assert len(notes()) == 4 and notes()[3] == (
        f"engine cache: torchscript plain pass in {entry.path} is corrupt (pass.pt does not match its recorded hash); "
        "rebuilding"
    )


def test_an_engine_cache_entry_from_before_checksums_is_checked_with_its_sha256(tmp_path):
    said: list[str] = []
    cache = EngineCache(tmp_path, message=said.append)
    parts, identity = {"engine": "fake", "pass": "plain", "model": "m"}, ("engine", "pass", "model")
    content, builds = bytes(range(256)) * 64, []

    def notes() -> list[str]:  # why an entry was rebuilt, not the build progress lines
        return [line for line in said if line.startswith("engine cache:")]

    def build(folder):
        builds.append(folder)
        (folder / "artefact.bin").write_bytes(content)

    def load():
        return cache.load_or_build(parts, identity, build, lambda f: (f / "artefact.bin").read_bytes(), label="fake")

    assert load() == content
    folder = cache.folder(parts, identity)
    meta = json.loads((folder / "entry.json").read_text())
    meta["files"]["artefact.bin"].pop("crc32", None)  # as entries were written before they recorded a checksum
    (folder / "entry.json").write_text(json.dumps(meta))
    assert load() == content and len(builds) == 1 and notes() == []  # still loads
    flip_byte(folder / "artefact.bin", 5000)
    assert load() == content and len(builds) == 2
    assert notes() == [
        f"engine cache: fake in {folder} is corrupt (artefact.bin does not match its recorded hash); rebuilding"
    ]
    meta = json.loads((folder / "entry.json").read_text())
    rebuilt = meta["files"]["artefact.bin"]
    assert rebuilt["crc32"] == f"crc32:{zlib.crc32(content):08x}" and len(rebuilt["sha256"]) == 64
    del rebuilt["crc32"], rebuilt["sha256"]  # an entry.json that records no hash at all cannot be checked: rebuilt
    (folder / "entry.json").write_text(json.dumps(meta))
    assert load() == content and len(builds) == 3 and "does not match its recorded hash" in notes()[-1]


def test_two_builders_of_one_entry_both_succeed(tmp_path):
    cache = EngineCache(tmp_path)
    parts = {"engine": "fake", "pass": "plain", "model": "m"}
    both_building = threading.Barrier(2)
    results, errors = [], []

    def build(folder):
        (folder / "artefact.bin").write_bytes(b"x" * 1000)
        both_building.wait(timeout=10)  # both have built before either installs

    def worker():
        try:
            results.append(
                cache.load_or_build(
                    parts, ("engine", "pass", "model"), build, lambda f: (f / "artefact.bin").read_bytes(), label="fake"
                )
            )
        except Exception as error:  # pragma: no cover - the failure this test looks for
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [b"x" * 1000] * 2
    assert [p.name for p in tmp_path.iterdir()] == [cache.folder(parts, ("engine", "pass", "model")).name]


@pytest.mark.slow
def test_engines_are_kept_in_the_cache_folder_unless_an_engine_cache_is_named(tmp_path, monkeypatch):
    """Without --engine-cache, built engines go to <cache dir>/engines ($VEDIT_CACHE_DIR here), which `vedit
    engines list` and `clear` find without the flag; the entries earlier versions built in ./engines are said,
    not used, and left alone."""
    from typer.testing import CliRunner

    from vedit.cli import create_app

    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / "engines" / "plain-torchscript-0123456789abcdef"
    earlier.mkdir(parents=True)
    (earlier / "entry.json").write_text("{}")
    cache = tmp_path / "cache" / "engines"  # conftest's $VEDIT_CACHE_DIR
    app, runner = create_app(), CliRunner()
    build = ["engines", "build", "--engine", "torchscript", "--model", "tiny", "--size", "64x48", "--frames", "1",
             "--editor", "img2img", "--propagator", "none", "--device", "cpu"]  # fmt: skip
    built = runner.invoke(app, build)
    assert built.exit_code == 0, built.output
    assert [(e.pass_name, e.engine) for e in EngineCache(cache).entries()] == [("plain", "torchscript")]
    assert [line for line in built.stderr.splitlines() if "engine cache:" in line] == [
        f"vedit: engine cache: built engines are kept in {cache} now, no longer in engines; the ones built there "
        "are not used (--engine-cache engines uses them)"
    ]
    assert [p.name for p in (tmp_path / "engines").iterdir()] == [earlier.name]  # left as it was
    listed = runner.invoke(app, ["engines", "list"])
    assert listed.exit_code == 0 and listed.stdout.count("torchscript") == 1, listed.output
    cleared = runner.invoke(app, ["engines", "clear"])
    assert cleared.exit_code == 0 and f"from {cache}" in " ".join(cleared.stdout.split())
    assert EngineCache(cache).entries() == [] and earlier.is_dir()


def test_the_engine_cache_folder_follows_the_cache_folder_and_the_earlier_one_is_said_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert EngineCache.for_options(None, tmp_path / "mine").root == tmp_path / "mine" / "engines"  # --cache-dir
    assert EngineCache.for_options(None).root == tmp_path / "cache" / "engines"  # $VEDIT_CACHE_DIR
    assert EngineCache.for_options("elsewhere", tmp_path / "mine").root == Path("elsewhere")  # --engine-cache
    (tmp_path / "engines" / "plain-onnxruntime-0123456789abcdef").mkdir(parents=True)
    parts = {"engine": "test", "pass": "plain"}

    def build_into(cache: EngineCache, shape: str) -> None:
        write = lambda folder: (folder / "pass.bin").write_bytes(b"built")  # noqa: E731
        cache.load_or_build({**parts, "shape": shape}, ("shape",), write, lambda folder: folder, label="test pass")

    said: list[str] = []
    build_into(EngineCache.for_options(message=said.append), "1")
    assert not [line for line in said if "engine cache:" in line]  # a folder named engines, but no entries in it
    (tmp_path / "engines" / "plain-onnxruntime-0123456789abcdef" / "entry.json").write_text("{}")
    build_into(EngineCache.for_options("engines", message=said.append), "2")  # the earlier folder, named: used
    build_into(EngineCache.for_options(tmp_path / "mine", message=said.append), "3")  # another folder, named
    assert not [line for line in said if "engine cache:" in line]
    build_into(EngineCache.for_options(message=said.append), "4")
    build_into(EngineCache.for_options(None, tmp_path / "mine", message=said.append), "5")  # once per process
    assert [line for line in said if "engine cache:" in line] == [
        f"engine cache: built engines are kept in {tmp_path / 'cache' / 'engines'} now, no longer in engines; the "
        "ones built there are not used (engine_cache='engines' uses them)"
    ]
    assert len(EngineCache(tmp_path / "engines").entries()) == 2

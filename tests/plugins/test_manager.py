"""The plugin host: registries built on demand, attribution, conflicts, failures, tracing."""

from __future__ import annotations

import importlib
import importlib.metadata
from types import SimpleNamespace

import pytest

from vedit import plugins
from vedit.errors import PluginError
from vedit.plugins.hookspecs import hookimpl

BUILTIN = {
    "editor": {"img2img", "pnp", "sdedit"},
    "propagator": {"tokenflow", "none"},
    "engine": {"eager"},
    "nn_backend": {"torch", "faiss"},
}


def test_builtins_are_loaded_by_name_through_the_public_hooks():
    from vedit.plugins.manager import DEFAULT_PLUGINS

    for kind, names in BUILTIN.items():
        found = plugins.registered(kind)
        assert names <= set(found), kind
        for name in names:
            assert found[name].package == "vedit"
            assert found[name].version == __import__("vedit").__version__
            assert found[name].plugin in DEFAULT_PLUGINS
    manager = plugins.get_plugin_manager()
    for name, module in DEFAULT_PLUGINS.items():
        assert manager.get_plugin(name) is importlib.import_module(module), name
    # No built-in failed (a third-party package installed by another test, such as the example one with its
    # deliberately broken plugin, may add failures of its own).
    assert [f for f in plugins.failures() if f.plugin in DEFAULT_PLUGINS or f.package == "vedit"] == []


def test_a_plugin_registered_late_appears_and_is_attributed():
    class Mine:
        name = "mine"
        needs_inversion = False

    class Plugin:
        @hookimpl
        def register_editors(self, register):
            register(Mine())

    plugins.get_plugin_manager().register(Plugin(), name="late-plugin")
    entry = plugins.registered("editor")["mine"]
    assert entry.plugin == "late-plugin"
    assert isinstance(plugins.get("editor", "mine"), Mine)


def test_two_plugins_registering_one_name_is_an_error_naming_both():
    class Twin:
        @hookimpl
        def register_propagators(self, register):
            class TokenFlowAgain:
                name = "tokenflow"

            register(TokenFlowAgain())

    plugins.get_plugin_manager().register(Twin(), name="twin-plugin")
    with pytest.raises(PluginError) as error:
        plugins.registered("propagator")
    assert "'tokenflow'" in str(error.value)
    assert "'tokenflow'" in str(error.value) and "twin-plugin" in str(error.value)
    assert "plugin 'tokenflow' (vedit)" in str(error.value)


def test_a_plugin_whose_hook_raises_is_reported_and_the_rest_work():
    class Broken:
        @hookimpl
        def register_editors(self, register):
            raise RuntimeError("boom")

    plugins.get_plugin_manager().register(Broken(), name="broken-hook")
    assert BUILTIN["editor"] <= set(plugins.registered("editor"))
    assert any(f.plugin == "broken-hook" and "boom" in f.error for f in plugins.failures())


def test_unknown_names_are_one_line_errors_listing_the_choices():
    with pytest.raises(PluginError) as error:
        plugins.get("editor", "nope")
    message = str(error.value)
    assert "\n" not in message
    assert "unknown editor 'nope'" in message and "img2img" in message and "pnp" in message


def test_unavailable_plugins_say_why():
    class NeedsGpu:
        name = "gpu-only"

        def unavailable_reason(self):
            return "needs CUDA"

    class Plugin:
        @hookimpl
        def register_engines(self, register):
            register(NeedsGpu())

    plugins.get_plugin_manager().register(Plugin(), name="gpu-plugin")
    assert plugins.registered("engine")["gpu-only"].unavailable_reason() == "needs CUDA"
    with pytest.raises(PluginError, match="cannot run here: needs CUDA"):
        plugins.get("engine", "gpu-only")


def test_auto_choices_are_firstresult_and_overridable():
    assert plugins.choose("engine", "auto", "cpu").name == "eager"
    assert plugins.choose("nn_backend", "auto", "cpu").name == "torch"

    class Exhaustive:
        name = "exhaustive"

        def nearest(self, queries, keys):
            raise NotImplementedError

    class Prefer:
        @hookimpl
        def register_nn_backends(self, register):
            register(Exhaustive())

        @hookimpl
        def choose_nn_backend(self, device):
            return "exhaustive"

    # A backend of the test's own, so the answer does not depend on whether faiss is installed.
    plugins.get_plugin_manager().register(Prefer(), name="prefer-exhaustive")
    assert plugins.choose("nn_backend", "auto", "cpu").name == "exhaustive"


def test_vedit_plugins_selects_among_third_party_plugins_only(example_plugin, monkeypatch):
    monkeypatch.setenv("VEDIT_PLUGINS", "example")
    plugins.reset()
    assert plugins.registered("editor")["reconstruct"].plugin == "example"
    assert plugins.failures() == []  # example_broken is not selected, so not even imported
    assert BUILTIN["editor"] <= set(plugins.registered("editor"))
    # No value leaves vedit without its own plugins: naming some of them, or none, loads them all.
    for value in ("", " ", "img2img,perframe", "example_broken_typo"):
        monkeypatch.setenv("VEDIT_PLUGINS", value)
        plugins.reset()
        editors = plugins.registered("editor")
        assert "reconstruct" not in editors, value
        for kind, names in BUILTIN.items():
            assert names <= set(plugins.registered(kind)), (value, kind)
        assert plugins.choose("engine", "auto", "cpu").name == "eager"
        assert plugins.failures() == []


def fake_entry_point(name: str, package: str, module: object) -> SimpleNamespace:
    """An entry point of the ``vedit`` group declared by the distribution ``package`` (version 1.0)."""
    dist = SimpleNamespace(metadata={"Name": package}, version="1.0")
    return SimpleNamespace(name=name, value=f"{package}_module", dist=dist, load=lambda: module)


def test_a_third_party_plugin_cannot_take_a_builtins_name(monkeypatch):
    class TokenFlowAgain:
        name = "tokenflow"

    class Twin:
        @hookimpl
        def register_propagators(self, register):
            register(TokenFlowAgain())

    listed = [fake_entry_point("twin", "vedit-twin", Twin()), fake_entry_point("pnp", "vedit-pnp", Twin())]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: listed if group == "vedit" else [])
    plugins.reset()
    with pytest.raises(PluginError) as error:
        plugins.registered("propagator")
    assert str(error.value) == (
        "propagator 'tokenflow' is registered twice: by plugin 'tokenflow' (vedit) and by plugin 'twin' "
        "(vedit-twin); uninstall one or limit VEDIT_PLUGINS"
    )
    # A plugin name (the entry point's) that a built-in has: refused, the built-in kept.
    failures = {f.plugin: f for f in plugins.failures()}
    assert failures["pnp"].package == "vedit-pnp"
    assert failures["pnp"].error == "plugin name 'pnp' is already used by package vedit"
    assert plugins.registered("editor")["pnp"].package == "vedit"


def test_entry_points_that_an_older_vedit_install_declared_are_not_loaded_again(monkeypatch):
    """vedit's own plugins were entry points of its distribution; an install made then still lists them."""
    stale = [fake_entry_point(name, "vedit", importlib.import_module(module)) for name, module in
             [("pnp", "vedit_plugins.editors.pnp"), ("eager", "vedit_engines.eager")]]  # fmt: skip
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: stale if group == "vedit" else [])
    plugins.reset()
    assert plugins.registered("editor")["pnp"].plugin == "pnp"
    assert plugins.registered("engine")["eager"].version == __import__("vedit").__version__
    assert plugins.failures() == []


def test_tracing_prints_every_hook_call(monkeypatch, capsys):
    monkeypatch.setenv("VEDIT_TRACE_PLUGINS", "1")
    plugins.reset()
    plugins.registered("editor")
    err = capsys.readouterr().err
    assert "hook register_editors(register) -> [pnp]" in err
    assert "hook register_editors(register) -> [img2img]" in err


def test_third_party_package_is_found_and_a_broken_one_reported(example_plugin):
    editors = plugins.registered("editor")
    assert editors["reconstruct"].package == "vedit-example-plugin"
    assert editors["reconstruct"].version == "0.3.1"
    assert plugins.registered("postprocessor")["negative"].plugin == "example"
    failures = {f.plugin: f for f in plugins.failures()}
    assert "example_broken" in failures
    assert "vedit_example_plugin_missing_dependency" in failures["example_broken"].error
    assert BUILTIN["editor"] <= set(editors)


def test_the_example_package_is_installed_outside_the_environment_and_the_checkout(example_plugin):
    import importlib.metadata
    import sys
    from pathlib import Path

    from conftest import PLUGIN_PKG

    dist = importlib.metadata.distribution(example_plugin)
    location = Path(dist.locate_file("")).resolve()
    assert not location.is_relative_to(Path(sys.prefix).resolve())  # not in the user's environment
    assert sorted(p.name for p in PLUGIN_PKG.iterdir()) == ["pyproject.toml", "vedit_example_plugin"]

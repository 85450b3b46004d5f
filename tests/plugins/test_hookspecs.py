"""The hooks a plugin can implement: what is named like a hook is exactly what pluggy knows as one."""

from __future__ import annotations

import pluggy

from vedit import plugins
from vedit.plugins import hookspecs


def _specified(pm: pluggy.PluginManager) -> set[str]:
    """The hooks ``pm`` has a specification for (a plugin's hook without one has a caller but no spec)."""
    return {name for name, caller in vars(pm.hook).items() if isinstance(caller, pluggy.HookCaller) and caller.spec}


def test_the_hooks_named_by_prefix_are_exactly_the_hooks_pluggy_knows():
    """The docs find the hooks by their prefix: a hook named otherwise would go unlisted, and a helper of the
    module named like a hook would be listed as one; both fail here, whatever the number of hooks."""
    by_prefix = {name for name in dir(hookspecs) if name.startswith(("register_", "choose_"))}
    fresh = pluggy.PluginManager("vedit")
    fresh.add_hookspecs(hookspecs)
    known = _specified(fresh)
    assert known, "pluggy found no hook specification in vedit.plugins.hookspecs"
    assert by_prefix == known, (sorted(by_prefix - known), sorted(known - by_prefix))
    assert _specified(plugins.get_plugin_manager()) == known  # vedit's own manager knows the same hooks

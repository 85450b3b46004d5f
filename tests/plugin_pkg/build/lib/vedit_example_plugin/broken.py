"""A plugin module that cannot be imported, to show that vedit reports it and carries on."""

import vedit_example_plugin_missing_dependency  # noqa: F401

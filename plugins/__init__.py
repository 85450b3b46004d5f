"""vedit's built-in plugins, grouped by kind; loaded always, through the same hooks a third-party package uses."""

"""Built-in propagators: ``tokenflow`` and ``none``."""

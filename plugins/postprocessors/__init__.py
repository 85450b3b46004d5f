"""Built-in post-processors: ``deflicker-luma`` and ``deflicker-flow``."""

"""Built-in annotators: control frames made from the source frames."""

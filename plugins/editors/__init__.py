"""Built-in editors: ``pnp``, ``sdedit``, ``img2img``."""

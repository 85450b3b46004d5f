"""The model: Stable Diffusion's parts loaded from the hub, a local folder, or built in code
(``tiny``, ``random:*``), on one device in one dtype."""

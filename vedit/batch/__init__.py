"""``vedit batch``: many clips and prompts from one job file, planned so each clip is inverted once, run here,
in a local pool or on Ray."""

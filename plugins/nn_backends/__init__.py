"""Built-in nearest-neighbour backends: ``torch`` and ``faiss``."""

"""Built-in optical-flow backends: ``dis`` (OpenCV) and ``raft`` (torchvision)."""

"""vedit's built-in engine plugins, one module per engine: what turns a UNet pass into the callable a run uses
(``eager``, ``compile``, ``torchscript``, ``onnxruntime``, ``tensorrt``, ``torch-tensorrt``); loaded always,
through the same hooks a third-party engine uses."""

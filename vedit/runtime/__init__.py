"""Running the UNet passes fast: the pass runner over the chosen engines, the engine cache, ONNX export,
host/device transfers, batch sizes, profiling and the CPU allocator."""

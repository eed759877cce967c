"""Running a generator on frames: device and precision, batches under a memory budget, seamless tiles,
the out-of-memory fallback, ONNX Runtime and its exported graphs, and the thread policy."""

"""The version, in one place: the package face, checkpoints, model files and ONNX exports record it."""

__version__ = "0.1.0"

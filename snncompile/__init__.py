"""snncompile: compile trained ANNs (ONNX) into integer spiking neural networks."""

__version__ = "0.1.0"

"""resnet-edge: ship ResNet classifiers to NVIDIA GPUs and Jetsons with measured parity."""

__version__ = "0.1.0"

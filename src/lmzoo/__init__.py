"""lmzoo: train small language models from scratch and compare architectures side by side."""

__version__ = "0.2.0"

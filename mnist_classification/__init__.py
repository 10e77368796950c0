"""Neural networks from scratch in NumPy for MNIST-style image classification."""

__version__ = "0.1.0"

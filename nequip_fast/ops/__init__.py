"""Equivariant operations: the convolution descriptor, the op seam and its backends."""
from .conv import BACKENDS, TensorProductConv, resolve_backend
from .descriptor import ConvDescriptor, Path

__all__ = ["BACKENDS", "ConvDescriptor", "Path", "TensorProductConv", "resolve_backend"]

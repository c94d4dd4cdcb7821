"""Equivariant operations: the convolution descriptor, its plan, the op seam and its backends."""
from .conv import BACKENDS, TensorProductConv, auto_backend, convolutions, resolve_backend, set_backend
from .descriptor import ConvDescriptor, Path

__all__ = ["BACKENDS", "ConvDescriptor", "Path", "TensorProductConv", "auto_backend", "convolutions",
           "resolve_backend", "set_backend"]

"""Triton kernels of the fused convolution (GPU; tested on CPU with TRITON_INTERPRET=1)."""
from .conv import Path, Plan, edge_grads, segment_conv

__all__ = ["Path", "Plan", "edge_grads", "segment_conv"]

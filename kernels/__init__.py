"""Triton kernels of the fused convolution (GPU; tested on CPU with TRITON_INTERPRET=1)."""

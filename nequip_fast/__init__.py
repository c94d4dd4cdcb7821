"""nequip_fast: NequIP interatomic potentials with fused equivariant-convolution kernels."""
__version__ = "0.1.0"

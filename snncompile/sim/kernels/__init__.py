"""CPU kernels the reference simulator runs on: the one-pass integrate-and-fire kernel
(numba) and exact int8 convolutions of spike trains (oneDNN)."""

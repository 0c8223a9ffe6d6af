"""CPU plumbing of a tuning run: allocator settings, numba kernels for the elementwise work
of a step, bit packing of kept spike trains, data-parallel training."""

"""Tuning: train a converted SNN graph under hardware constraints, with the integer spiking
forward of the reference simulator and a surrogate backward.

* :mod:`.model`      :class:`TandemNet`, the torch module with stages (layers 1..k spiking)
* :mod:`.options`    :class:`TrainOptions`, what every method reads
* :mod:`.ptl`        progressive tandem learning: the adaptive scheduler and the training loop
* :mod:`.methods`    the tuning methods by name (ptl, tandem, ltl, stdb, none)
* :mod:`.bptt`       surrogate-gradient backpropagation through time (ltl, stdb)
* :mod:`.surrogate`  the surrogate derivatives of a spike
* :mod:`.prefix`     spike trains of the layers a stage keeps fixed, computed once per stage
* :mod:`.checkpoint` per-stage checkpoints in OUT/checkpoints, and resuming from them
* :mod:`.runtime`    allocator, numba kernels, bit packing, data-parallel training
"""

"""Tandem learning: train a converted SNN graph with the integer spiking forward of the
reference simulator and a straight-through backward ("count ~ activation").

* :mod:`.requant`    the write-back pass: float weights -> integer IR (weights, thresholds)
* :mod:`.intsim`     the exact integer forward, layer by layer over the window, in torch
* :mod:`.constraints` fan-in masks, and the check that an IR meets --bits / --fanin
* :mod:`.model`      :class:`TandemNet`, the torch module with stages (layers 1..k spiking)
* :mod:`.schedule`   progressive tandem learning: the adaptive scheduler and the training loop
* :mod:`.checkpoint` per-stage checkpoints in OUT/checkpoints, and resuming from them
* :mod:`.distributed` data-parallel tuning under torchrun (gradients averaged by hand)
"""

"""Calibration: activation statistics for threshold normalization, and the search for the
smallest time window that holds accuracy (``--timesteps auto``)."""

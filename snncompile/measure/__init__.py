"""Measuring builds: evaluation against the ANN, reports, and the CI gate."""

"""Targets: the public backend plugin API, its design rules, flattening a graph to
populations and synapses, the artifact directory, and choosing a target."""

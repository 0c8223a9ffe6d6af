"""Set the time window of a converted graph. Thresholds do not depend on T
(docs/semantics.md), so the same integers run at any window; only T changes."""

from __future__ import annotations

import dataclasses

from ..ir import Graph


def with_timesteps(graph: Graph, timesteps: int) -> Graph:
    """The same network with its window set to ``timesteps`` (thresholds do not depend on T)."""
    g = graph.copy()
    g.timesteps = int(timesteps)
    if g.conversion is not None:
        g.conversion = dataclasses.replace(g.conversion, timesteps=int(timesteps))
    return g

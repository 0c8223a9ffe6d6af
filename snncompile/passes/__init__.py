"""Graph-to-graph passes. A pass is a function Graph -> Graph that returns a new graph and
never mutates its input (it works on ``graph.copy()`` and returns ``replace_nodes(...)``)."""

from .fold import (DEFAULT_PASSES, fold_affine_into_weighted, merge_affines, remove_noops,
                   run_passes, swap_maxpool_relu)

__all__ = ["DEFAULT_PASSES", "fold_affine_into_weighted", "merge_affines", "remove_noops",
           "run_passes", "swap_maxpool_relu"]

"""The conformance kit for backend plugins (public API).

Call it from a plugin's own pytest suite::

    import pytest
    from snncompile.testing import check_case, zoo_names

    @pytest.mark.parametrize("case", zoo_names())
    def test_conformance(case, tmp_path):
        check_case(MyBackend(), case, tmp_path)   # raises ConformanceError on a mismatch

or all at once with :func:`check_backend`. See docs/plugins.md.
"""

from .conformance import (ConformanceError, Report, check_backend, check_case,
                          check_no_code_from_artifact, compare_run, fit_case, reference)
from .zoo import Case, zoo_case, zoo_names

__all__ = ["Case", "ConformanceError", "Report", "check_backend", "check_case",
           "check_no_code_from_artifact", "compare_run",
           "fit_case", "reference", "zoo_case", "zoo_names"]

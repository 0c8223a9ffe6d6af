"""The plugin's own test suite: the snncompile conformance kit, one pytest case per network."""

import pytest

from snncompile.testing import check_case, zoo_case, zoo_names
from snncompile_template import TemplateBackend


@pytest.mark.parametrize("case", zoo_names())
def test_conformance(case, tmp_path):
    backend = TemplateBackend()
    if backend.check(zoo_case(case).graph):
        pytest.skip("outside this target's limits (max pooling)")
    check_case(backend, case, tmp_path)  # raises ConformanceError naming layer, step and neuron


def test_run_executes_nothing_from_the_artifact(tmp_path):
    from snncompile.testing import check_no_code_from_artifact

    check_no_code_from_artifact(TemplateBackend(), workdir=tmp_path)  # artifacts are data

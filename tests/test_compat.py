"""The startup check that turns a mismatched Ray/vLLM pair into one actionable error."""

import pytest

from deployments import compat


def test_installed_pair_imports_together():
    compat.check_serve_llm_imports()


def test_missing_vllm_module_names_versions_and_tested_pairs(monkeypatch):
    monkeypatch.setattr(compat, "_PROBES", ("vllm.entrypoints.no_such_module_for_this_test",))
    with pytest.raises(compat.IncompatibleStackError) as err:
        compat.check_serve_llm_imports()
    msg = str(err.value)
    assert "no_such_module_for_this_test" in msg
    assert "ray 2.57.1" in msg and "vllm 0.25.0" in msg
    assert "pip install" in msg

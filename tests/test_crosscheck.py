"""Every backend against the float64 reference, through the case-file path (SPEC §9):
logits, state, loss, gradients, K optimiser steps and generation, within the tolerance table.

Where a framework's native optimiser differs from SPEC §4 by design (registry Deviation),
the backend must match, at the same tolerance, the reference run with that native formula:
that proves the measured difference from SPEC §4 has the named cause and no other."""
from __future__ import annotations

import numpy as np
import pytest

from impls import registry
from impls.config import ClipConfig, ModelConfig, OptimizerConfig, TrainConfig
from impls.params import init_params
from impls.case import diff_outputs, format_rows, run_case
from tests.conftest import backends_under_test, reference, require_backend


@pytest.mark.parametrize("backend", backends_under_test())
def test_backend_matches_reference(backend, cross_case):
    require_backend(backend)
    case, expected = reference(cross_case)
    spec = registry.get_spec(backend)
    be = registry.create(backend, case.spec.model, case.spec.train, case.params)
    out = run_case(case, be)
    dev = spec.deviations.get(case.spec.train.optimizer.name)
    rows = diff_outputs(out, expected, "float32", dev.cause if dev else "")
    failed = [r for r in rows if r.status == "FAIL"]
    assert not failed, f"{backend} on {cross_case.id}:\n" + format_rows(failed)
    if dev is not None:
        native = registry.create("numpy", case.spec.model, case.spec.train, case.params,
                                 eps_form=dev.eps_form)
        rows = diff_outputs(out, run_case(case, native), "float32")
        failed = [r for r in rows if r.status == "FAIL"]
        assert not failed, (f"{backend} on {cross_case.id} differs from the reference with its "
                            f"native formula ({dev.eps_form}):\n" + format_rows(failed))


@pytest.mark.parametrize("backend", backends_under_test())
@pytest.mark.parametrize("model", [ModelConfig(11, 5, 2, "embedding", 4), ModelConfig(9, 6, 3)],
                         ids=["embed", "onehot"])
def test_load_params_round_trip_is_exact(backend, model):
    """Canonical -> native -> canonical loses nothing a float32 value holds, both ways."""
    require_backend(backend)
    p32 = {k: v.astype(np.float32).astype(np.float64) for k, v in init_params(model, 3).items()}
    train = TrainConfig(OptimizerConfig("adam", lr=0.01), ClipConfig("norm", 1.0))
    be = registry.create(backend, model, train, init_params(model, 0))
    be.load(p32)
    out = be.params()
    assert set(out) == set(p32)
    for k in p32:
        assert out[k].dtype == np.float64
        np.testing.assert_array_equal(out[k], p32[k], err_msg=k)
    be.load(out)  # and back again
    for k, v in be.params().items():
        np.testing.assert_array_equal(v, p32[k], err_msg=k)

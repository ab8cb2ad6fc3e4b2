"""What is specific to torch-genloop: generation really runs as one compiled program (a Dynamo
graph holding the while loop), never a silent eager fallback, which would make it a mislabelled
copy of `torch`; the program is shared by every backend object of one shape (the weights are
its arguments), and it draws exactly the per-token `torch` backend's tokens. One tiny model:
a compilation takes seconds on 2 cores (the conformance suite covers correctness)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from impls import registry  # noqa: E402
from impls.config import ModelConfig, TrainConfig  # noqa: E402
from impls.params import init_params  # noqa: E402


def test_generation_is_one_compiled_program_shared_by_shape():
    from torch._dynamo.utils import counters
    m = ModelConfig(7, 3, 1)  # a shape no other test compiles
    p = init_params(m, 2, scale=1.5)  # peaked, varied distributions
    u = np.random.default_rng(1).random(40)
    be = registry.create("torch-genloop", m, TrainConfig(), p)
    before = counters["stats"]["unique_graphs"]
    a = be.generate(np.array([1, 2, 3, 4]), 40, 1.0, 0, u)
    assert counters["stats"]["unique_graphs"] == before + 1, dict(counters["stats"])
    graph_breaks = sum(counters["graph_break"].values())
    # another object of the same shape, other weights, other lengths (not 1: Dynamo
    # specialises sizes 0 and 1, and shares a symbol between equal sizes: no length here equals
    # V, H or 4H): the same program
    q = init_params(m, 3, scale=1.5)
    b = registry.create("torch-genloop", m, TrainConfig(), q).generate(np.array([4, 5]), 9, 0.7, 0, u[:9])
    assert counters["stats"]["unique_graphs"] == before + 1, dict(counters["stats"])
    assert sum(counters["graph_break"].values()) == graph_breaks
    ref = registry.create("torch", m, TrainConfig(), p)
    np.testing.assert_array_equal(a, ref.generate(np.array([1, 2, 3, 4]), 40, 1.0, 0, u))
    np.testing.assert_array_equal(b, registry.create("torch", m, TrainConfig(), q).generate(
        np.array([4, 5]), 9, 0.7, 0, u[:9]))
    assert len(set(a.tolist())) > 2  # sampled, not a constant
    assert "no train mode" in registry.unsupported("torch-genloop", mode="train")
    assert "while_loop" in registry.get_spec("torch-genloop").description

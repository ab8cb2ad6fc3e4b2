"""What is specific to tensorflow-genloop: generation is one tf.function traced once for any
prefix length and token count, and it draws exactly the per-token `tensorflow` variant's
tokens (same model, same step body, same uniforms). It has no train mode."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from impls import registry  # noqa: E402
from impls.config import ModelConfig, TrainConfig  # noqa: E402
from impls.params import init_params  # noqa: E402
from harness.commands.check_cases import CROSS_CASES  # noqa: E402
from tests.conftest import reference  # noqa: E402


def test_one_traced_loop_and_same_tokens_as_per_token_variant():
    m = ModelConfig(13, 6, 2, "embedding", 4)
    p = init_params(m, 2, scale=1.0)  # large weights: peaked, varied distributions
    loop = registry.create("tensorflow-genloop", m, TrainConfig(), p)
    step = registry.create("tensorflow", m, TrainConfig(), p)
    u = np.random.default_rng(0).random(30)
    for prefix, n, temp, k in (([1, 2, 3], 30, 1.0, 0), ([4], 7, 0.7, 3), ([5, 6], 12, 0.0, 0)):
        a = loop.generate(np.array(prefix), n, temp, k, u[:n])
        b = step.generate(np.array(prefix), n, temp, k, u[:n])
        np.testing.assert_array_equal(a, b)
        assert a.shape == (n,)
    assert loop._gen_loop_fn.experimental_get_tracing_count() == 1
    assert registry.get_spec("tensorflow-genloop").modes == ("eval", "generate")
    assert "no train mode" in registry.unsupported("tensorflow-genloop", mode="train")


@pytest.mark.parametrize("cc", CROSS_CASES, ids=lambda c: c.id)
def test_generation_matches_reference(cc):
    """The cross-check for a generation-only variant: the generated tokens of every case."""
    case, expected = reference(cc)
    be = registry.create("tensorflow-genloop", case.spec.model, case.spec.train, case.params)
    g = case.spec.generate
    got = be.generate(case.prefix, g.n, g.temperature, g.top_k, case.uniforms[:g.n])
    np.testing.assert_array_equal(got, expected["generated"])

"""What is specific to torch-compile: its steps really run as compiled graphs (Dynamo captured
frames, inductor built graphs) rather than silently falling back to eager PyTorch, which
would make it a mislabelled copy of `torch`. One tiny model: each compilation takes seconds
on 2 cores (the conformance suite covers correctness)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from impls import registry  # noqa: E402
from impls.config import ClipConfig, ModelConfig, OptimizerConfig, TrainConfig  # noqa: E402
from impls.params import init_params  # noqa: E402
from tests.conftest import random_window  # noqa: E402


def test_eval_and_train_steps_are_compiled_graphs():
    from torch._dynamo.utils import counters
    m = ModelConfig(7, 4)
    train = TrainConfig(OptimizerConfig("sgd", lr=0.5), ClipConfig("norm", 1.0))
    be = registry.create("torch-compile", m, train, init_params(m, 0))  # resets Dynamo's counters
    tok, tgt, h, c = random_window(m, B=2, T=3)
    tok, tgt = be.put(tok), be.put(tgt)
    loss, _ = be.eval_step(tok, tgt, be.state(h, c))
    graphs_eval = counters["stats"]["unique_graphs"]
    assert graphs_eval >= 1, dict(counters["stats"])
    ref = registry.create("torch", m, train, init_params(m, 0))
    ref_loss, _ = ref.eval_step(ref.put(np.asarray(tok).T), ref.put(np.asarray(tgt).T), ref.state(h, c))
    assert be.value(loss) == pytest.approx(ref.value(ref_loss), rel=1e-6)
    be.train_step(tok, tgt, be.state(h, c))
    # the train-mode forward/loss graph and the clip + update graph come on top
    assert counters["stats"]["unique_graphs"] >= graphs_eval + 2, dict(counters["stats"])
    # nn.LSTM itself is left to eager PyTorch (Dynamo graph-breaks there): the description says so
    assert "graph-breaks" in registry.get_spec("torch-compile").description

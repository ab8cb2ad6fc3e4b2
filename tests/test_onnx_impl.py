"""What is specific to the onnxruntime backend: it has no train mode (its spec, its methods),
its eval and generation outputs match the reference on every cross-check case (run_case
computes train outputs too, so the generic cross-check cannot hold it), and its graph really
is ONNX's LSTM operator fed in ONNX's own layout."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from impls import layouts, onnx_impl, registry  # noqa: E402
from impls.case import diff_outputs, format_rows  # noqa: E402
from impls.config import ModelConfig, TrainConfig  # noqa: E402
from impls.params import init_params  # noqa: E402
from tests.conftest import random_window, reference  # noqa: E402
from harness.commands.check_cases import CROSS_CASES  # noqa: E402

EVAL_KEYS = ("logits", "h", "c", "loss", "generated")


def _eval_outputs(be, case) -> dict[str, np.ndarray]:
    """The eval and generate part of impls.case.run_case's outputs."""
    tok, tgt = be.put(case.tokens), be.put(case.targets)
    logits, st = be.forward(tok, be.state(case.h0, case.c0))
    h, c = be.fetch_state(st)
    loss, _ = be.eval_step(tok, tgt, be.state(case.h0, case.c0))
    g = case.spec.generate
    gen = be.generate(case.prefix, g.n, g.temperature, g.top_k, case.uniforms[:g.n])
    return {"logits": logits, "h": h, "c": c, "loss": np.array(be.value(loss)),
            "generated": np.asarray(gen, np.int64)}


@pytest.mark.parametrize("cc", CROSS_CASES, ids=lambda c: c.id)
def test_eval_and_generation_match_reference(cc):
    case, expected = reference(cc)
    be = registry.create("onnxruntime", case.spec.model, case.spec.train, case.params)
    out = _eval_outputs(be, case)
    rows = diff_outputs(out, {k: expected[k] for k in EVAL_KEYS}, "float32")
    assert len(rows) == len(EVAL_KEYS)
    failed = [r for r in rows if r.status != "ok"]
    assert not failed, format_rows(failed)


def test_no_train_mode_in_spec_and_methods():
    assert "train" not in registry.get_spec("onnxruntime").modes
    assert "no train mode" in registry.unsupported("onnxruntime", mode="train")
    assert registry.unsupported("onnxruntime", mode="eval") is None
    assert registry.unsupported("onnxruntime", mode="generate") is None
    m = ModelConfig(7, 4)
    be = registry.create("onnxruntime", m, TrainConfig(), init_params(m, 0))
    tok, tgt, h, c = random_window(m)
    for call in (be.train_step, be.loss_and_grads):
        with pytest.raises(NotImplementedError, match="no train mode"):
            call(be.put(tok), be.put(tgt), be.state(h, c))


def test_graph_is_onnx_lstm_in_onnx_layout():
    """One LSTM operator per layer whose W, R, B initializers are the canonical weights in
    gate order i, o, f, c, (1, 4H, D) and [Wb | Rb = 0]; a swapped gate would fail here."""
    m = ModelConfig(9, 5, 2, "embedding", 3)
    p = init_params(m, 1)
    be = registry.create("onnxruntime", m, TrainConfig(), p)
    g = be._fwd_proto.graph
    assert [n.op_type for n in g.node].count("LSTM") == 2
    init = {t.name: onnx_impl.numpy_helper.to_array(t) for t in g.initializer}
    H = m.hidden_size
    W0 = init["W0"]  # (1, 4H, E)
    assert W0.shape == (1, 4 * H, 3) and init["R1"].shape == (1, 4 * H, H)
    assert init["B1"].shape == (1, 8 * H) and not init["B1"][0, 4 * H:].any()
    # ONNX block 1 is the output gate o, canonical block 3
    np.testing.assert_array_equal(W0[0, H:2 * H].T, p["lstm.0.W_x"][:, 3 * H:].astype(np.float32))
    np.testing.assert_array_equal(W0, layouts.weight_to_native(layouts.ONNX, p["lstm.0.W_x"], H)
                                  .astype(np.float32))


def test_threads_reach_the_sessions():
    m = ModelConfig(7, 4)
    try:
        onnx_impl.configure(1, "cpu")
        be = registry.create("onnxruntime", m, TrainConfig(), init_params(m, 0))
        assert be._fwd.get_session_options().intra_op_num_threads == 1
    finally:
        onnx_impl.configure(None, "cpu")
    with pytest.raises(ValueError, match="CPU only"):
        onnx_impl.configure(1, "gpu")


def test_generation_is_one_session_run(monkeypatch):
    """A sequence is one run of the generation graph (a Loop that draws in the graph), the
    top-k filter a second graph built once; the tokens are the reference's."""
    from impls import onnx_impl
    m = ModelConfig(10, 5, 2)
    p = init_params(m, 3, scale=1.2)
    be = registry.create("onnxruntime", m, TrainConfig(), p)
    runs = []
    real = onnx_impl.ort.InferenceSession.run
    monkeypatch.setattr(onnx_impl.ort.InferenceSession, "run",
                        lambda self, *a, **k: runs.append(1) or real(self, *a, **k))
    u = np.random.default_rng(1).random(20)
    ref = registry.create("numpy", m, TrainConfig(), p)
    for temp, k in ((1.0, 0), (0.8, 3), (0.0, 0), (1.0, 0)):
        got = be.generate(np.array([2, 5]), 20, temp, k, u)
        np.testing.assert_array_equal(got, ref.generate(np.array([2, 5]), 20, temp, k, u))
    assert len(runs) == 4 and sorted(be._gen) == [False, True]
    graph = onnx_impl.build_generate_graph(m, onnx_impl._native(m, p), filtered=False)
    assert [n.op_type for n in graph.graph.node].count("Loop") == 1

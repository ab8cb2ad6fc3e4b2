"""TensorFlow-backend specifics the cross-check does not cover: the canonical <-> Keras layout
table, optimiser reset on load, dropout p > 0 in train mode only, deterministic eval."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("keras")

from impls.config import ClipConfig, ModelConfig, OptimizerConfig, TrainConfig  # noqa: E402
from impls.params import init_params  # noqa: E402
from tests.conftest import random_window

ti = pytest.importorskip("impls.tensorflow_impl")

# sizes chosen so that no two dimensions coincide
EMBED = ModelConfig(vocab_size=11, hidden_size=5, num_layers=2, input="embedding", embed_size=4)
ADAM = TrainConfig(OptimizerConfig("adam", lr=0.01), ClipConfig("norm", 1.0))


def _backend(model: ModelConfig = EMBED, train: TrainConfig = ADAM, seed: int = 0):
    return ti.TensorflowBackend(model, train, init_params(model, seed))


def test_gate_blocks_land_in_keras_order():
    """Canonical [i f g o] blocks must appear in Keras' kernel as [i f c o] (c = g)."""
    H = EMBED.hidden_size
    p = init_params(EMBED, 0)
    for k, name in enumerate(ti.CANONICAL_GATES):
        p["lstm.0.W_x"][:, k * H:(k + 1) * H] = k + 1  # block value = 1 + canonical position
        p["lstm.0.b"][k * H:(k + 1) * H] = 10 * (k + 1)
    be = _backend()
    be.load(p)
    kernel = be._lstms[0].cell.kernel.numpy()
    bias = be._lstms[0].cell.bias.numpy()
    for j, gate in enumerate(("i", "f", "g", "o")):  # Keras column order
        expect = ti.CANONICAL_GATES.index(gate) + 1
        assert np.all(kernel[:, j * H:(j + 1) * H] == expect), gate
        assert np.all(bias[j * H:(j + 1) * H] == 10 * expect), gate


def test_load_resets_the_optimiser():
    tok, tgt, h, c = random_window(EMBED)
    p = init_params(EMBED, 1)
    a = _backend()
    a.load(p)
    st = a.state(h, c)
    for _ in range(3):
        _, st = a.train_step(a.put(tok), a.put(tgt), st)
    a.load(p)  # back to step 0: Adam's moments and t are reset
    b = _backend()
    b.load(p)
    la, _ = a.train_step(a.put(tok), a.put(tgt), a.state(h, c))
    lb, _ = b.train_step(b.put(tok), b.put(tgt), b.state(h, c))
    assert a.value(la) == b.value(lb)
    pa, pb = a.params(), b.params()
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


@pytest.mark.parametrize("input_kind", ["onehot", "embedding"])
def test_dropout_trains_and_eval_is_deterministic(input_kind):
    m = (ModelConfig(11, 5, 2, dropout=0.5) if input_kind == "onehot"
         else ModelConfig(11, 5, 2, "embedding", 4, dropout=0.5))
    be = _backend(m, TrainConfig(OptimizerConfig("sgd", lr=0.5), ClipConfig("norm", 5.0)))
    tok, tgt, h, c = random_window(m)
    T, Tg = be.put(tok), be.put(tgt)
    e1, _ = be.eval_step(T, Tg, be.state(h, c))
    e2, _ = be.eval_step(T, Tg, be.state(h, c))
    assert be.value(e1) == be.value(e2)  # eval: no dropout, no randomness
    lg1, _ = be.forward(T, be.state(h, c))
    lg2, _ = be.forward(T, be.state(h, c))
    np.testing.assert_array_equal(lg1, lg2)
    # train mode draws masks: two gradient evaluations on the same weights differ
    l1, _, _, g1 = be.loss_and_grads(T, Tg, be.state(h, c))
    l2, _, _, g2 = be.loss_and_grads(T, Tg, be.state(h, c))
    assert np.isfinite(l1) and np.isfinite(l2) and l1 != l2
    before = be.params()
    loss, st = be.train_step(T, Tg, be.state(h, c))
    be.sync()
    assert np.isfinite(be.value(loss))
    after = be.params()
    assert all(not np.array_equal(before[k], after[k]) for k in before)
    hh, cc = be.fetch_state(st)
    assert hh.shape == cc.shape == (m.num_layers, tok.shape[0], m.hidden_size)


def test_gpu_without_gpu_is_a_clear_error():
    import tensorflow as tf
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="GPU"):
        ti.TensorflowBackend(EMBED, ADAM, init_params(EMBED, 0), device="gpu")

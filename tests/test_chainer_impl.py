"""Chainer-specific checks of impls.chainer_impl: the interleaved L.LSTM gate layout
(layouts.CHAINER) through the backend's own wrappers on a hand-made example, exact
load/params round trips in float32 and float64, that the converted weights drive L.LSTM
exactly like the canonical equations, the dropout presets, and the GPU refusal. Behaviour every
backend shares: tests/test_conformance.py. Skipped where Chainer is not installed (it lives
in its own NumPy < 2 env)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("chainer")

from impls import chainer_impl as ci  # noqa: E402
from impls.config import ModelConfig, TrainConfig, get_preset  # noqa: E402
from impls.layouts import LayoutError  # noqa: E402
from impls.params import init_params  # noqa: E402


def _coded(D: int, H: int) -> np.ndarray:
    """Canonical (D, 4H) whose entry names itself: 1000*d + 100*block + j (blocks i f g o)."""
    w = np.empty((D, 4 * H))
    for d in range(D):
        for block in range(4):
            for j in range(H):
                w[d, block * H + j] = 1000 * d + 100 * block + j
    return w


def test_gate_table_positions_by_hand():
    H, D = 3, 2
    native = ci.canonical_to_chainer(_coded(D, H), H)
    assert native.shape == (4 * H, D)
    # Chainer row 4j+k is unit j, gate k in (a=g, i, f, o); canonical blocks are i=0 f=1 g=2 o=3.
    for j in range(H):
        for k, block in enumerate((2, 0, 1, 3)):  # a(=g), i, f, o
            for d in range(D):
                assert native[4 * j + k, d] == 1000 * d + 100 * block + j
    # A few positions written out: unit 0 is rows 0..3 = g0, i0, f0, o0; unit 2's o is row 11.
    assert native[0, 0] == 200 and native[1, 0] == 0 and native[2, 0] == 100
    assert native[3, 0] == 300 and native[11, 1] == 1302 and native[4, 0] == 201


def test_gate_table_bias_and_round_trip():
    H = 4
    b = np.arange(4 * H, dtype=np.float64)  # canonical [i0..i3 f0..f3 g0..g3 o0..o3]
    nb = ci.canonical_to_chainer(b, H)
    assert nb.tolist() == [8, 0, 4, 12, 9, 1, 5, 13, 10, 2, 6, 14, 11, 3, 7, 15]
    assert np.array_equal(ci.chainer_to_canonical(nb, H), b)
    w = np.random.default_rng(0).standard_normal((7, 4 * H))
    assert np.array_equal(ci.chainer_to_canonical(ci.canonical_to_chainer(w, H), H), w)
    with pytest.raises(LayoutError):
        ci.canonical_to_chainer(np.zeros((4 * H, 7)), H)  # transposed input is refused


@pytest.mark.parametrize("kind", ["onehot", "embedding"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_load_params_round_trip_exact(kind, dtype):
    m = ModelConfig(9, 5, 2, kind, 4 if kind == "embedding" else 0)
    p = init_params(m, seed=3, forget_bias=1.0)
    p = {k: v.astype(dtype).astype(np.float64) for k, v in p.items()}  # representable values
    be = ci.ChainerBackend(m, TrainConfig(), p, dtype=dtype)
    back = be.params()
    assert set(back) == set(p)
    for k in p:
        assert np.array_equal(back[k], p[k]), k
    # The forget bias is loaded once, not added again by L.LSTM's forget_bias_init.
    nb = be.net.lstms[0].upward.b.array
    assert np.array_equal(nb[2::4], p["lstm.0.b"][5:10].astype(dtype))  # gate k=2 is f


def test_lstm_link_matches_canonical_step():
    """One L.LSTM step with converted weights equals docs/SPEC.md §1's equations (float64)."""
    import chainer

    H, D, B = 3, 4, 2
    rng = np.random.default_rng(1)
    Wx, Wh, b = rng.standard_normal((D, 4 * H)), rng.standard_normal((H, 4 * H)), rng.standard_normal(4 * H)
    x, h0, c0 = rng.standard_normal((B, D)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    with chainer.using_config("dtype", np.float64):
        lstm = ci.L.LSTM(D, H, lateral_init=0, upward_init=0, bias_init=0, forget_bias_init=0)
    lstm.upward.W.array[...] = ci.canonical_to_chainer(Wx, H)
    lstm.lateral.W.array[...] = ci.canonical_to_chainer(Wh, H)
    lstm.upward.b.array[...] = ci.canonical_to_chainer(b, H)
    lstm.set_state(chainer.Variable(c0), chainer.Variable(h0))
    h = lstm(x).array
    z = x @ Wx + h0 @ Wh + b
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    i, f, g, o = sig(z[:, :H]), sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), sig(z[:, 3 * H:])
    c = f * c0 + i * g
    np.testing.assert_allclose(lstm.c.array, c, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h, o * np.tanh(c), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("preset", ["tutorial", "chainer-ptb"])
def test_dropout_presets_train(preset):
    pr = get_preset(preset)
    m = pr.model
    assert m.dropout > 0
    p = init_params(m, seed=0)
    be = ci.ChainerBackend(m, pr.train, p, seed=1)
    rng = np.random.default_rng(0)
    B, T = 2, 5
    tok = rng.integers(0, m.vocab_size, (B, T + 1))
    x, y = be.put(tok[:, :-1]), be.put(tok[:, 1:])
    h0 = np.zeros((m.num_layers, B, m.hidden_size))
    loss, st = be.train_step(x, y, be.state(h0, h0))
    assert np.isfinite(be.value(loss))
    h, c = be.fetch_state(st)
    assert h.shape == c.shape == (m.num_layers, B, m.hidden_size) and np.all(np.isfinite(h))
    after = be.params()
    assert any(not np.array_equal(after[k], p[k]) for k in p)
    assert all(np.all(np.isfinite(v)) for v in after.values())


def test_gpu_is_refused():
    with pytest.raises(ValueError, match="cuDNN"):
        ci.configure(None, "gpu")
    m = ModelConfig(5, 3)
    with pytest.raises(ValueError, match="cuDNN"):
        ci.ChainerBackend(m, TrainConfig(), init_params(m, 0), device="gpu")

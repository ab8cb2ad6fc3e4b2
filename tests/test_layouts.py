"""impls/layouts.py, row by row: the gate permutation of every layout written out by hand (so
a wrong table fails), a small layer converted by hand, exact round trips, the shape checks,
and, where the framework is installed here, the table driving the framework's own LSTM cell
(Flax's nnx cells, ONNX Runtime's LSTM operator) to the canonical equations of docs/SPEC.md §1."""
from __future__ import annotations

import numpy as np
import pytest

from impls import layouts
from impls.layouts import LAYOUTS, LayoutError

# H = 2: canonical gate-axis positions are i0 i1 f0 f1 g0 g1 o0 o1 = 0..7. Entry r is the
# canonical position stored at native position r, written out by hand from each framework's
# documentation (docs/SPEC.md §3).
BY_HAND = {
    "canonical": [0, 1, 2, 3, 4, 5, 6, 7],  # i f g o
    "torch": [0, 1, 2, 3, 4, 5, 6, 7],  # i f g o
    "char-rnn": [0, 1, 2, 3, 6, 7, 4, 5],  # i f o g
    "keras": [0, 1, 2, 3, 4, 5, 6, 7],  # i f c o
    "chainer": [4, 0, 2, 6, 5, 1, 3, 7],  # per unit: g i f o (unit 0), g i f o (unit 1)
    "onnx": [0, 1, 6, 7, 2, 3, 4, 5],  # i o f c
    "flax-cell": [0, 1, 2, 3, 4, 5, 6, 7],  # ii if_ ig io
    "flax-optimized": [0, 1, 2, 3, 4, 5, 6, 7],  # i f g o
}
# native name -> shape for D = 3, H = 2, by hand
SHAPES = {
    "canonical": {"W_x": (3, 8), "W_h": (2, 8), "b": (8,)},
    "torch": {"weight_ih_l0": (8, 3), "weight_hh_l0": (8, 2), "bias_ih_l0": (8,), "bias_hh_l0": (8,)},
    "char-rnn": {"i2h.weight": (8, 3), "h2h.weight": (8, 2), "i2h.bias": (8,), "h2h.bias": (8,)},
    "keras": {"kernel": (3, 8), "recurrent_kernel": (2, 8), "bias": (8,)},
    "chainer": {"upward.W": (8, 3), "lateral.W": (8, 2), "upward.b": (8,)},
    "onnx": {"W": (1, 8, 3), "R": (1, 8, 2), "B": (1, 16)},
    "flax-cell": {"ii.kernel": (3, 2), "if_.kernel": (3, 2), "ig.kernel": (3, 2), "io.kernel": (3, 2),
                  "hi.kernel": (2, 2), "hf.kernel": (2, 2), "hg.kernel": (2, 2), "ho.kernel": (2, 2),
                  "hi.bias": (2,), "hf.bias": (2,), "hg.bias": (2,), "ho.bias": (2,)},
    "flax-optimized": {"dense_i.kernel": (3, 8), "dense_h.kernel": (2, 8), "dense_h.bias": (8,)},
}
ROWS = list(LAYOUTS)


def test_every_row_has_a_hand_written_example():
    assert set(BY_HAND) == set(LAYOUTS) == set(SHAPES)


@pytest.mark.parametrize("name", ROWS)
def test_gate_permutation_by_hand(name):
    assert layouts.gate_permutation(LAYOUTS[name], 2).tolist() == BY_HAND[name]


@pytest.mark.parametrize("name", ROWS)
def test_native_shapes_by_hand(name):
    assert layouts.native_shapes(LAYOUTS[name], 3, 2) == SHAPES[name]


def _flat_in_native_order(lay: layouts.Layout, native: dict, role: str) -> list[np.ndarray]:
    """The native arrays of one role as a list of gate-axis columns (each over the rows)."""
    names = getattr(lay, role)
    if lay.per_gate:
        m = np.concatenate([native[n] for n in names], axis=-1)  # (rows, 4H) native gate order
    else:
        m = native[names].reshape(native[names].shape[len(lay.lead):])
        if lay.out_first:
            m = m.T
    return m


@pytest.mark.parametrize("name", ROWS)
def test_small_layer_by_hand(name):
    """D = 1, H = 2, every canonical entry names its own position: W_x = [0..7],
    W_h = [[0..7], [100..107]], b = 10 + [0..7]. The native arrays must hold BY_HAND's
    order, in the row's orientation."""
    lay, P = LAYOUTS[name], np.array(BY_HAND[name])
    W_x = np.arange(8.0)[None, :]  # (1, 8)
    W_h = np.stack([np.arange(8.0), 100 + np.arange(8.0)])  # (2, 8)
    b = 10 + np.arange(8.0)
    nat = layouts.layer_to_native(lay, W_x, W_h, b)
    assert set(nat) == set(layouts.native_shapes(lay, 1, 2))
    assert _flat_in_native_order(lay, nat, "W_x").ravel().tolist() == P.tolist()
    wh = _flat_in_native_order(lay, nat, "W_h")  # (2, 8): unit rows, native gate columns
    assert wh.tolist() == [P.tolist(), (100 + P).tolist()]
    if lay.packed_bias:  # ONNX B = [Wb | Rb]: the bias, then the zero recurrent half
        assert nat[lay.b].tolist() == [(10 + P).tolist() + [0.0] * 8]
    else:
        bias = (np.concatenate([nat[n] for n in lay.b]) if lay.per_gate else nat[lay.b])
        assert bias.tolist() == (10 + P).tolist()
    if lay.b_zero is not None:
        assert not nat[lay.b_zero].any()
    if lay.out_first and not lay.lead:  # spot checks of orientation: gate axis first
        assert nat[lay.W_x].shape == (8, 1) and nat[lay.W_h][1].tolist() == [P[1], 100 + P[1]]


@pytest.mark.parametrize("name", ROWS)
@pytest.mark.parametrize("D,H", [(3, 4), (7, 1), (4, 5)])
def test_round_trip_is_exact(name, D, H):
    lay = LAYOUTS[name]
    rng = np.random.default_rng(D * 10 + H)
    W_x, W_h, b = rng.standard_normal((D, 4 * H)), rng.standard_normal((H, 4 * H)), rng.standard_normal(4 * H)
    nat = layouts.layer_to_native(lay, W_x, W_h, b)
    for n, shape in layouts.native_shapes(lay, D, H).items():
        assert nat[n].shape == shape, n
    x, h, bb = layouts.layer_to_canonical(lay, nat, D, H)
    assert np.array_equal(x, W_x) and np.array_equal(h, W_h) and np.array_equal(bb, b)
    if not lay.per_gate:  # the per-tensor helpers agree with the per-layer functions
        assert np.array_equal(layouts.weight_to_canonical(lay, nat[lay.W_x], D, H), W_x)
        assert np.array_equal(layouts.bias_to_canonical(lay, nat[lay.b], H,
                                                        nat.get(lay.b_zero) if lay.b_zero else None), b)


@pytest.mark.parametrize("name", [n for n, x in LAYOUTS.items() if x.b_zero or x.packed_bias])
def test_two_biases_read_back_as_their_sum(name):
    """A framework's second bias is held at 0 by the backends; if it ever is not, reading
    must give the bias the gates see (b + b_zero), not silently drop half."""
    lay, H = LAYOUTS[name], 3
    b = np.arange(12.0)
    nat = layouts.layer_to_native(lay, np.zeros((2, 12)), np.zeros((3, 12)), b)
    if lay.packed_bias:
        nat[lay.b] = nat[lay.b].copy()
        nat[lay.b][0, 4 * H:] = 1.0  # the recurrent half
    else:
        nat[lay.b_zero] = np.ones(4 * H)
    assert layouts.layer_to_canonical(lay, nat, 2, H)[2].tolist() == (b + 1).tolist()


@pytest.mark.parametrize("name", ROWS)
def test_wrong_shapes_are_refused(name):
    lay, D, H = LAYOUTS[name], 3, 2
    W_x, W_h, b = np.zeros((D, 4 * H)), np.zeros((H, 4 * H)), np.zeros(4 * H)
    with pytest.raises(LayoutError):
        layouts.layer_to_native(lay, W_x.T, W_h, b)  # transposed W_x
    with pytest.raises(LayoutError):
        layouts.layer_to_native(lay, W_x, W_h[:, :-1], b)  # W_h not (H, 4H)
    with pytest.raises(LayoutError):
        layouts.layer_to_native(lay, W_x, W_h, b[:-1])
    nat = layouts.layer_to_native(lay, W_x, W_h, b)
    for n in nat:  # every native array is checked on the way back
        bad = dict(nat)
        bad[n] = np.zeros(nat[n].shape[:-1] + (nat[n].shape[-1] + 1,))
        with pytest.raises(LayoutError, match="shape"):
            layouts.layer_to_canonical(lay, bad, D, H)
        with pytest.raises(LayoutError, match="missing"):
            layouts.layer_to_canonical(lay, {k: v for k, v in nat.items() if k != n}, D, H)
    with pytest.raises(LayoutError):
        layouts.layer_to_canonical(lay, nat, D + 1, H)  # the caller's D is checked too
    if lay.per_gate:
        with pytest.raises(LayoutError, match="per gate"):
            layouts.weight_to_native(lay, W_x, H)
    else:
        wrong = np.zeros(layouts.weight_shape(lay, D, H)[:-1] + (D + 1,)) if lay.out_first else W_x.T
        with pytest.raises(LayoutError):
            layouts.weight_to_canonical(lay, wrong, D, H)


def test_a_bad_row_is_refused():
    with pytest.raises(LayoutError, match="permutation"):
        layouts.Layout("x", "", ("i", "f", "f", "o"), "", "a", "b", "c")


# ---- the tables drive the frameworks' own cells --------------------------------------------

def _canonical_step(x, h, c, W_x, W_h, b):
    """docs/SPEC.md §1, one time step: (B, D), (B, H), (B, H) -> h', c'."""
    H = h.shape[1]
    z = x @ W_x + h @ W_h + b  # (B, 4H): [i f g o]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    i, f, g, o = sig(z[:, :H]), sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), sig(z[:, 3 * H:])
    c2 = f * c + i * g
    return o * np.tanh(c2), c2


def _step_inputs(D=3, H=4, B=2, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, D)), rng.standard_normal((B, H)), rng.standard_normal((B, H)),
            rng.standard_normal((D, 4 * H)), rng.standard_normal((H, 4 * H)), rng.standard_normal(4 * H))


@pytest.mark.parametrize("cell,row", [("LSTMCell", "flax-cell"), ("OptimizedLSTMCell", "flax-optimized")])
def test_flax_cell_follows_its_row(cell, row):
    pytest.importorskip("flax")
    import jax
    from flax import nnx
    x, h, c, W_x, W_h, b = _step_inputs()
    D, H = W_x.shape[0], W_h.shape[0]
    f32 = lambda a: jax.numpy.asarray(np.asarray(a, np.float32))  # noqa: E731
    m = getattr(nnx, cell)(D, H, rngs=nnx.Rngs(0))
    params = {".".join(map(str, k)): v for k, v in nnx.to_flat_state(nnx.state(m, nnx.Param))}
    assert {k: tuple(v[...].shape) for k, v in params.items()} == \
        layouts.native_shapes(LAYOUTS[row], D, H)  # the row names flax 0.12's parameters
    for n, a in layouts.layer_to_native(LAYOUTS[row], W_x, W_h, b).items():
        params[n][...] = f32(a)
    (c2, h2), _ = m((f32(c), f32(h)), f32(x))  # flax's carry is (c, h)
    eh, ec = _canonical_step(*(np.asarray(a, np.float32).astype(np.float64)
                               for a in (x, h, c, W_x, W_h, b)))
    np.testing.assert_allclose(np.asarray(h2), eh, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(c2), ec, rtol=1e-5, atol=1e-5)


def test_onnx_lstm_operator_follows_its_row():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper
    x, h, c, W_x, W_h, b = _step_inputs()
    D, H, B = W_x.shape[0], W_h.shape[0], x.shape[0]
    nat = layouts.layer_to_native(layouts.ONNX, W_x, W_h, b)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731 - ORT's LSTM is float32
    inits = [numpy_helper.from_array(f32(nat[n]), n) for n in ("W", "R", "B")]
    node = helper.make_node("LSTM", ["X", "W", "R", "B", "", "H0", "C0"], ["Y", "Yh", "Yc"],
                            hidden_size=H)
    graph = helper.make_graph(
        [node], "one_step",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, B, D]),
         helper.make_tensor_value_info("H0", TensorProto.FLOAT, [1, B, H]),
         helper.make_tensor_value_info("C0", TensorProto.FLOAT, [1, B, H])],
        [helper.make_tensor_value_info("Yh", TensorProto.FLOAT, [1, B, H]),
         helper.make_tensor_value_info("Yc", TensorProto.FLOAT, [1, B, H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = min(model.ir_version, 10)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    yh, yc = sess.run(["Yh", "Yc"], {"X": f32(x[None]), "H0": f32(h[None]), "C0": f32(c[None])})
    eh, ec = _canonical_step(*(f32(a).astype(np.float64) for a in (x, h, c, W_x, W_h, b)))
    np.testing.assert_allclose(yh[0], eh, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(yc[0], ec, rtol=1e-5, atol=1e-5)

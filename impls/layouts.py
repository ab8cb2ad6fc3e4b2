"""Every LSTM parameter layout the backends meet, as one table, and the conversions to and
from the canonical layout (docs/SPEC.md §2, §3).

One LSTM layer's canonical parameters are W_x (D, 4H), W_h (H, 4H) and b (4H,), gate blocks
of width H in the order i, f, g, o along the last axis (x @ W_x + h @ W_h + b). A framework
stores the same numbers differently in four independent ways, and each `Layout` row says
which:

- gate order: which gate each block holds (`order`, written with canonical letters: Keras'
  and ONNX's "c", the candidate, is g here);
- blocking: gate-major blocks of H (everyone) or unit-major interleave (Chainer's L.LSTM:
  row 4j+k holds gate order[k] of unit j);
- orientation: (D, 4H) like canonical, or out-features first (4H, D) like nn.Linear, possibly
  behind leading axes (ONNX: num_directions = 1), or one (D, H) array per gate (Flax's
  LSTMCell);
- biases: one, or an input bias plus a recurrent bias (torch, char-rnn, ONNX, Flax's
  LSTMCell puts its one bias on the recurrent side). Loading writes the canonical b into
  `b` and zeros into `b_zero`; reading gives b + b_zero (the bias the gates see).

Conversion is a gate permutation over the 4H axis (`gate_permutation`) plus the row's
orientation, with explicit shape checks that raise LayoutError: nothing is reshaped until it
fits. Backends call the per-tensor helpers (weight_to_native, ...) for their own parameter
and gradient tables; `layer_to_native` / `layer_to_canonical` convert a whole layer by the
row's native names (what tests/test_layouts.py proves every row with).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GATES = ("i", "f", "g", "o")  # the canonical gate blocks, in order


class LayoutError(ValueError):
    """An array does not have the shape its layout row says it must have."""


Names = str | tuple[str, str, str, str]  # one native name, or one per gate in `order`


@dataclass(frozen=True)
class Layout:
    name: str
    where: str  # what stores it this way (documentation)
    order: tuple[str, str, str, str]  # gates in native order, canonical letters
    native_letters: str  # how the framework spells that order (documentation)
    W_x: Names  # native name(s) of the input weight
    W_h: Names  # native name(s) of the recurrent weight
    b: Names  # native name(s) of the bias holding the canonical b
    b_zero: Names | None = None  # the second bias, held at zero; None where there is one bias
    interleave: bool = False  # unit-major gate axis (Chainer) instead of gate-major blocks
    out_first: bool = False  # weights (4H, D): out-features first (nn.Linear's convention)
    lead: tuple[int, ...] = ()  # leading axes of every native array (ONNX: (1,) directions)
    packed_bias: bool = False  # b and b_zero end to end in one (..., 8H) array named `b` (ONNX)

    @property
    def per_gate(self) -> bool:
        """One array per gate (Flax's LSTMCell) instead of one (., 4H) array."""
        return isinstance(self.W_x, tuple)

    def __post_init__(self) -> None:
        if sorted(self.order) != sorted(GATES):
            raise LayoutError(f"layout {self.name}: order {self.order} is not a permutation of {GATES}")
        if self.per_gate and (self.out_first or self.lead or self.interleave or self.packed_bias):
            raise LayoutError(f"layout {self.name}: per-gate arrays take no other option")
        if self.packed_bias and self.b_zero is not None:
            raise LayoutError(f"layout {self.name}: a packed bias holds both halves under `b`")


CANONICAL = Layout("canonical", "docs/SPEC.md §2; impls.numpy_impl; impls.jax_impl",
                   ("i", "f", "g", "o"), "i,f,g,o", "W_x", "W_h", "b")
TORCH = Layout("torch", "torch.nn.LSTM weight_ih_l{l}, weight_hh_l{l}, bias_ih_l{l}, bias_hh_l{l}",
               ("i", "f", "g", "o"), "i,f,g,o", "weight_ih_l0", "weight_hh_l0", "bias_ih_l0",
               b_zero="bias_hh_l0", out_first=True)
CHAR_RNN = Layout("char-rnn", "Torch7 char-rnn i2h/h2h Linear layers (impls.torch_impl torch-cell)",
                  ("i", "f", "o", "g"), "i,f,o,g", "i2h.weight", "h2h.weight", "i2h.bias",
                  b_zero="h2h.bias", out_first=True)
KERAS = Layout("keras", "keras.layers.LSTM (Keras 3) kernel, recurrent_kernel, bias",
               ("i", "f", "g", "o"), "i,f,c,o", "kernel", "recurrent_kernel", "bias")
CHAINER = Layout("chainer", "chainer.links.LSTM upward.W, lateral.W (no bias), upward.b",
                 ("g", "i", "f", "o"), "a,i,f,o per unit", "upward.W", "lateral.W", "upward.b",
                 interleave=True, out_first=True)
ONNX = Layout("onnx", "ONNX LSTM operator inputs W (1, 4H, D), R (1, 4H, H), B (1, 8H) = [Wb | Rb]",
              ("i", "o", "f", "g"), "i,o,f,c", "W", "R", "B", out_first=True, lead=(1,),
              packed_bias=True)
FLAX_CELL = Layout("flax-cell", "flax.nnx.LSTMCell: per-gate Linear layers ii, if_, ig, io "
                   "(kernel (D, H), no bias) and hi, hf, hg, ho (kernel (H, H), bias (H,))",
                   ("i", "f", "g", "o"), "i,f,g,o per gate",
                   ("ii.kernel", "if_.kernel", "ig.kernel", "io.kernel"),
                   ("hi.kernel", "hf.kernel", "hg.kernel", "ho.kernel"),
                   ("hi.bias", "hf.bias", "hg.bias", "ho.bias"))
FLAX_OPTIMIZED = Layout("flax-optimized", "flax.nnx.OptimizedLSTMCell: dense_i (kernel (D, 4H), no "
                        "bias), dense_h (kernel (H, 4H), bias (4H,))",
                        ("i", "f", "g", "o"), "i,f,g,o", "dense_i.kernel", "dense_h.kernel",
                        "dense_h.bias")

LAYOUTS: dict[str, Layout] = {x.name: x for x in (
    CANONICAL, TORCH, CHAR_RNN, KERAS, CHAINER, ONNX, FLAX_CELL, FLAX_OPTIMIZED)}


# ---- the gate permutation -------------------------------------------------------------

def gate_permutation(layout: Layout, H: int) -> np.ndarray:
    """(4H,) int: entry r is the canonical gate-axis index (block*H + unit) that native
    gate-axis position r holds. Canonical -> native is x[..., perm]; the inverse assigns
    through it."""
    if H < 1:
        raise LayoutError(f"hidden size must be >= 1, got {H}")
    block = {g: k for k, g in enumerate(GATES)}
    if layout.interleave:  # row 4j + k: gate order[k] of unit j
        perm = [block[layout.order[k]] * H + j for j in range(H) for k in range(4)]
    else:  # block k: gate order[k], units 0..H-1
        perm = [block[g] * H + j for g in layout.order for j in range(H)]
    out = np.asarray(perm, dtype=np.int64)
    assert np.array_equal(np.sort(out), np.arange(4 * H)), "gate table is not a permutation"
    return out


def _expect(a: np.ndarray, shape: tuple[int, ...], what: str) -> None:
    if tuple(a.shape) != tuple(shape):
        raise LayoutError(f"{what}: shape {tuple(a.shape)}, expected {tuple(shape)}")


# ---- per tensor (what backends use for parameters and gradients) ---------------------

def weight_shape(layout: Layout, rows: int, H: int) -> tuple[int, ...]:
    """Native shape of a (rows, 4H) canonical weight (rows = D for W_x, H for W_h)."""
    if layout.per_gate:
        raise LayoutError(f"layout {layout.name} stores one array per gate: use layer_to_native")
    return layout.lead + ((4 * H, rows) if layout.out_first else (rows, 4 * H))


def bias_shape(layout: Layout, H: int) -> tuple[int, ...]:
    if layout.per_gate:
        raise LayoutError(f"layout {layout.name} stores one array per gate: use layer_to_native")
    return layout.lead + ((8 * H,) if layout.packed_bias else (4 * H,))


def weight_to_native(layout: Layout, w: np.ndarray, H: int) -> np.ndarray:
    """Canonical (rows, 4H) -> the row's native weight (weight_shape)."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise LayoutError(f"{layout.name} weight: expected a canonical (rows, {4 * H}) matrix, got {w.shape}")
    _expect(w, (w.shape[0], 4 * H), f"{layout.name} weight (canonical)")
    native = w[:, gate_permutation(layout, H)]  # (rows, 4H), native gate order
    if layout.out_first:
        native = native.T  # (4H, rows)
    native = np.ascontiguousarray(native).reshape(weight_shape(layout, w.shape[0], H))  # + lead axes
    return native


def weight_to_canonical(layout: Layout, native: np.ndarray, rows: int, H: int) -> np.ndarray:
    """The row's native weight (weight_shape(rows, H), checked) -> canonical (rows, 4H)."""
    native = np.asarray(native)
    _expect(native, weight_shape(layout, rows, H), f"{layout.name} weight (native)")
    m = native.reshape(native.shape[len(layout.lead):])  # drop the size-1 lead axes
    if layout.out_first:
        m = m.T  # (rows, 4H)
    w = np.empty((rows, 4 * H), native.dtype)
    w[:, gate_permutation(layout, H)] = m
    return w


def bias_to_native(layout: Layout, b: np.ndarray) -> np.ndarray:
    """Canonical (4H,) -> the row's native `b` (bias_shape; a packed bias gets zeros for
    its recurrent half). The `b_zero` partner, where the row has one, is zeros of the
    same shape."""
    b = np.asarray(b)
    if b.ndim != 1 or b.shape[0] % 4:
        raise LayoutError(f"{layout.name} bias: expected a canonical (4H,) vector, got {b.shape}")
    H = b.shape[0] // 4
    native = b[gate_permutation(layout, H)]  # (4H,)
    if layout.packed_bias:
        native = np.concatenate([native, np.zeros_like(native)])  # (8H,) = [input | recurrent]
    return native.reshape(bias_shape(layout, H))


def bias_to_canonical(layout: Layout, native: np.ndarray, H: int,
                      zero: np.ndarray | None = None) -> np.ndarray:
    """The row's native `b` (plus its `b_zero` partner where it has one; a packed bias holds
    both) -> canonical (4H,): the sum, the bias the gates actually see."""
    native = np.asarray(native)
    _expect(native, bias_shape(layout, H), f"{layout.name} bias (native)")
    v = native.reshape(native.shape[len(layout.lead):])
    if layout.packed_bias:
        v = v[:4 * H] + v[4 * H:]  # input half + recurrent half
    if zero is not None:
        if layout.b_zero is None:
            raise LayoutError(f"layout {layout.name} has one bias; got a second")
        zero = np.asarray(zero)
        _expect(zero, bias_shape(layout, H), f"{layout.name} second bias (native)")
        v = v + zero.reshape(v.shape)
    b = np.empty(4 * H, native.dtype)
    b[gate_permutation(layout, H)] = v
    return b


# ---- per layer, by native name ---------------------------------------------------------

def native_shapes(layout: Layout, D: int, H: int) -> dict[str, tuple[int, ...]]:
    """Native name -> shape, for one layer with input width D and hidden size H."""
    if layout.per_gate:
        out = {n: (D, H) for n in layout.W_x}
        out.update({n: (H, H) for n in layout.W_h})
        out.update({n: (H,) for n in layout.b})
        return out
    out = {layout.W_x: weight_shape(layout, D, H), layout.W_h: weight_shape(layout, H, H),
           layout.b: bias_shape(layout, H)}
    if layout.b_zero is not None:
        out[layout.b_zero] = bias_shape(layout, H)
    return out


def _check_canonical(W_x: np.ndarray, W_h: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    W_h = np.asarray(W_h)
    if W_h.ndim != 2:
        raise LayoutError(f"W_h: expected (H, 4H), got {W_h.shape}")
    H = W_h.shape[0]
    _expect(W_h, (H, 4 * H), "W_h")
    if np.ndim(W_x) != 2:
        raise LayoutError(f"W_x: expected (D, {4 * H}), got {np.shape(W_x)}")
    D = np.shape(W_x)[0]
    _expect(np.asarray(W_x), (D, 4 * H), "W_x")
    _expect(np.asarray(b), (4 * H,), "b")
    return D, H


def layer_to_native(layout: Layout, W_x: np.ndarray, W_h: np.ndarray,
                    b: np.ndarray) -> dict[str, np.ndarray]:
    """One canonical layer -> {native name: array}, shapes as native_shapes."""
    D, H = _check_canonical(W_x, W_h, b)
    if layout.per_gate:
        perm = gate_permutation(layout, H)
        x, h, bb = np.asarray(W_x)[:, perm], np.asarray(W_h)[:, perm], np.asarray(b)[perm]
        out: dict[str, np.ndarray] = {}
        for k in range(4):  # native gate k: columns k*H..(k+1)*H of the permuted arrays
            sl = slice(k * H, (k + 1) * H)
            out[layout.W_x[k]] = np.ascontiguousarray(x[:, sl])  # (D, H)
            out[layout.W_h[k]] = np.ascontiguousarray(h[:, sl])  # (H, H)
            out[layout.b[k]] = bb[sl].copy()  # (H,)
    else:
        out = {layout.W_x: weight_to_native(layout, W_x, H),
               layout.W_h: weight_to_native(layout, W_h, H),
               layout.b: bias_to_native(layout, b)}
        if layout.b_zero is not None:
            out[layout.b_zero] = np.zeros(bias_shape(layout, H), np.asarray(b).dtype)
    for name, shape in native_shapes(layout, D, H).items():
        _expect(out[name], shape, f"{layout.name} {name}")
    return out


def layer_to_canonical(layout: Layout, native: dict[str, np.ndarray], D: int,
                       H: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """{native name: array} for one layer (every name of native_shapes, shapes checked)
    -> canonical (W_x (D, 4H), W_h (H, 4H), b (4H,))."""
    shapes = native_shapes(layout, D, H)
    missing = [n for n in shapes if n not in native]
    if missing:
        raise LayoutError(f"{layout.name}: missing native arrays {missing}")
    for name, shape in shapes.items():
        _expect(np.asarray(native[name]), shape, f"{layout.name} {name}")
    if layout.per_gate:
        perm = gate_permutation(layout, H)
        cat = lambda names: np.concatenate([np.asarray(native[n]) for n in names], axis=-1)  # noqa: E731
        x, h, bb = cat(layout.W_x), cat(layout.W_h), cat(layout.b)  # native gate order
        W_x, W_h, b = np.empty_like(x), np.empty_like(h), np.empty_like(bb)
        W_x[:, perm], W_h[:, perm], b[perm] = x, h, bb
        return W_x, W_h, b
    zero = native[layout.b_zero] if layout.b_zero is not None else None
    return (weight_to_canonical(layout, native[layout.W_x], D, H),
            weight_to_canonical(layout, native[layout.W_h], H, H),
            bias_to_canonical(layout, native[layout.b], H, zero))

"""What is specific to the flax backend: optax's formulas, configured as docs/SPEC.md §4 says and
checked on one scalar by hand (Adam's epsilon after bias correction, RMSprop's outside the
root via eps_in_sqrt=False, Adagrad's inside the root: the registry's documented deviation),
and the model really is Flax's NNX LSTM in the layout row layouts.FLAX_OPTIMIZED."""
from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("flax")
pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from impls import flax_impl, layouts, registry  # noqa: E402
from impls.config import ClipConfig, ModelConfig, OptimizerConfig, TrainConfig  # noqa: E402
from impls.params import init_params  # noqa: E402

G = 1e-4  # a gradient whose square (1e-8) is comparable with eps: placements differ by ~2x


def _first_update(opt: OptimizerConfig) -> float:
    tx = flax_impl.make_tx(TrainConfig(opt, ClipConfig()))
    p = jnp.zeros((1,), jnp.float32)
    upd, _ = tx.update(jnp.full((1,), G, jnp.float32), tx.init(p), p)
    return float(upd[0])


def test_adam_eps_after_bias_correction():
    o = OptimizerConfig("adam", lr=0.1, eps=1e-4)
    m, v = (1 - o.beta1) * G, (1 - o.beta2) * G * G
    spec = -o.lr * (m / (1 - o.beta1)) / (math.sqrt(v / (1 - o.beta2)) + o.eps)
    assert _first_update(o) == pytest.approx(spec, rel=1e-5)


def test_rmsprop_eps_outside_root():
    o = OptimizerConfig("rmsprop", lr=0.1, alpha=0.95, eps=1e-4)
    v = (1 - o.alpha) * G * G
    spec = -o.lr * G / (math.sqrt(v) + o.eps)
    assert _first_update(o) == pytest.approx(spec, rel=1e-5)
    assert abs(spec - (-o.lr * G / math.sqrt(v + o.eps))) > 1e-3 * abs(spec)  # placement matters


def test_adagrad_eps_inside_root_is_the_documented_deviation():
    o = OptimizerConfig("adagrad", lr=0.1, eps=1e-8)
    inside = -o.lr * G / math.sqrt(G * G + o.eps)
    outside = -o.lr * G / (math.sqrt(G * G) + o.eps)
    got = _first_update(o)
    assert got == pytest.approx(inside, rel=1e-5) and got != pytest.approx(outside, rel=1e-2)
    dev = registry.get_spec("flax").deviations["adagrad"]
    assert dev.eps_form == "eps_inside"
    assert set(registry.get_spec("flax").deviations) == {"adagrad"}


def test_model_is_nnx_optimized_lstm_in_its_layout():
    m = ModelConfig(9, 5, 2, "embedding", 3)
    p = init_params(m, 1)
    be = registry.create("flax", m, TrainConfig(), p)
    assert all(isinstance(c, nnx.OptimizedLSTMCell) for c in be.net.cells)
    assert all(isinstance(r, nnx.RNN) for r in be.net.rnns)
    cell = be.net.cells[1]
    want = layouts.layer_to_native(layouts.FLAX_OPTIMIZED, p["lstm.1.W_x"], p["lstm.1.W_h"], p["lstm.1.b"])
    np.testing.assert_array_equal(np.asarray(cell.dense_i.kernel.get_value()),
                                  want["dense_i.kernel"].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(cell.dense_h.bias.get_value()),
                                  want["dense_h.bias"].astype(np.float32))
    assert not hasattr(cell.dense_i, "bias") or cell.dense_i.bias is None  # one bias, hidden side


def test_generation_is_one_compiled_program_and_the_steps_are_cached(monkeypatch):
    """generate makes one call of the compiled loop (flax_impl._generate: nnx.merge + lax.scan
    inside jax.jit), drawing the reference's tokens; the module's split is taken once until the
    parameters change; eval and train steps are nnx.cached_partial steps, dropped on a change
    of mode or parameters (their graph changes)."""
    m = ModelConfig(9, 6, 2)
    p = init_params(m, 2, scale=1.2)
    be = registry.create("flax", m, TrainConfig(), p)
    calls = []
    real = flax_impl._generate
    monkeypatch.setattr(flax_impl, "_generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    u = np.random.default_rng(0).random(25)
    got = be.generate(np.array([1, 2, 3]), 25, 1.0, 0, u)
    assert len(calls) == 1 and got.shape == (25,)
    want = registry.create("numpy", m, TrainConfig(), p).generate(np.array([1, 2, 3]), 25, 1.0, 0, u)
    np.testing.assert_array_equal(got, want)
    split = be._split
    be.generate(np.array([4]), 5, 0.0, 0, u[:5])
    assert be._split is split and len(calls) == 2
    tok = be.put(np.zeros((2, 3), np.int64))
    st = be.state(np.zeros((2, 2, 6)), np.zeros((2, 2, 6)))
    be.eval_step(tok, tok, st)
    ev = be._steps["eval"]
    be.eval_step(tok, tok, st)
    assert be._steps["eval"] is ev  # reused while the mode stays
    be.train_step(tok, tok, st)
    assert "eval" not in be._steps and be._split is None  # a new mode, new parameters
    be.load(p)
    assert be._steps == {}

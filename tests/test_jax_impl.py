"""JAX-specific checks of impls.jax_impl: the canonical<->pytree table round-trips exactly,
generation is one compiled program (no per-token dispatch) that matches the reference,
train steps reuse one compilation, float64 mode matches the reference to float64 precision,
and configure/GPU errors. Behaviour every backend shares: tests/test_conformance.py.
Skipped where JAX is not installed. Sizes are tiny: compile time dominates these tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from impls import jax_impl as ji  # noqa: E402
from impls import registry  # noqa: E402
from impls.case import diff_outputs, make_case, run_case  # noqa: E402
from impls.config import (CaseSpec, ClipConfig, GenerateConfig, ModelConfig,  # noqa: E402
                          OptimizerConfig, TrainConfig)
from impls.params import init_params  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _tokens(m: ModelConfig, B: int, T: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    seq = np.random.default_rng(seed).integers(0, m.vocab_size, (B, T + 1))
    return seq[:, :-1], seq[:, 1:]


class _Counting:
    """Stands in for a backend's compiled programs and counts the calls to each."""

    def __init__(self, programs: object) -> None:
        self._programs = programs
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str):
        fn = getattr(self._programs, name)

        def counted(*a, **k):
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(*a, **k)
        return counted


@pytest.mark.parametrize("kind", ["onehot", "embedding"])
def test_load_params_round_trip_exact(kind):
    m = ModelConfig(9, 5, 2, kind, 4 if kind == "embedding" else 0)
    p = init_params(m, seed=3, forget_bias=1.0)
    p = {k: v.astype(np.float32).astype(np.float64) for k, v in p.items()}  # representable
    be = ji.JaxBackend(m, TrainConfig(), p)
    out = be.params()
    assert set(out) == set(p)
    for k in p:
        assert out[k].dtype == np.float64 and np.array_equal(out[k], p[k]), k
    tree = ji._to_native(m, p, np.dtype(np.float32))
    assert tree["lstm"][1]["W_x"].shape == (5, 20) and tree["out"]["W"].shape == (5, 9)
    bad = dict(p, **{"lstm.0.W_h": p["lstm.0.W_h"].T.copy()})  # (4H, H): a transposed block
    with pytest.raises(AssertionError):
        ji._to_native(m, bad, np.dtype(np.float32))


def test_generate_is_one_compiled_call_and_matches_reference():
    m = ModelConfig(11, 6, 2)
    p = init_params(m, seed=1, scale=0.8)  # large weights: peaked, varied distributions
    be = ji.JaxBackend(m, TrainConfig(), p)
    ref = registry.create("numpy", m, TrainConfig(), p)
    counter = _Counting(be._fn)
    be._fn = counter  # type: ignore[assignment]
    rng = np.random.default_rng(0)
    prefix = np.array([3, 1, 4, 1, 5])
    for temperature, top_k in ((0.0, 0), (0.9, 3), (1.0, 0), (1.3, 0)):
        u = rng.random(30)
        got = be.generate(prefix, 30, temperature, top_k, u)
        assert got.dtype == np.int64 and got.shape == (30,)
        assert got.tolist() == ref.generate(prefix, 30, temperature, top_k, u).tolist()
    assert counter.calls == {"generate": 4}  # one program call per generate, nothing else
    # (greedy, top_k) are static, the temperature is traced: 1.0 and 1.3 share a program
    assert be._fn._programs.generate._cache_size() == 3
    one = be.generate(prefix[:1], 5, 1.0, 0, rng.random(5))  # a one-token prefix works
    assert one.shape == (5,)


def test_train_steps_compile_once_and_stay_on_device():
    m = ModelConfig(7, 4, 1)
    train = TrainConfig(OptimizerConfig("adam", lr=0.0123), ClipConfig("norm", 1.0))  # own cache
    be = ji.JaxBackend(m, train, init_params(m, 0))
    tok, tgt = (be.put(a) for a in _tokens(m, 2, 6))
    st = be.state(np.zeros((1, 2, 4)), np.zeros((1, 2, 4)))
    for _ in range(3):
        loss, st = be.train_step(tok, tgt, st)
        assert isinstance(loss, jax.Array) and isinstance(st[0], jax.Array)
    be.sync()
    assert be._fn.train_step._cache_size() == 1
    assert int(be.opt["t"]) == 3
    be.load(init_params(m, 0))  # load resets the optimiser (t = 0, zero moments)
    assert int(be.opt["t"]) == 0
    moments = jax.tree_util.tree_leaves((be.opt["m"], be.opt["v"]))
    assert all(not np.asarray(x).any() for x in moments)


def test_float64_matches_reference_to_float64_precision():
    was = jax.config.jax_enable_x64
    try:
        spec = CaseSpec(ModelConfig(13, 7, 2, "embedding", 6),
                        TrainConfig(OptimizerConfig("adam", lr=0.01), ClipConfig("norm", 0.05)),
                        2, GenerateConfig(8, 0.8, 4))
        case = make_case(spec, 2, 2, 9)
        ref = run_case(case, registry.create("numpy", spec.model, spec.train, case.params))
        be = ji.JaxBackend(spec.model, spec.train, case.params, dtype="float64")
        assert be.p["out"]["W"].dtype == np.float64
        rows = diff_outputs(run_case(case, be), ref, "float64")
        assert all(r.status == "ok" for r in rows), [(r.key, r.rel) for r in rows]
    finally:
        jax.config.update("jax_enable_x64", was)


@pytest.mark.parametrize("model", [ModelConfig(9, 6, 3, dropout=0.3), ModelConfig(11, 5, 2, "embedding", 4)],
                         ids=["onehot3-dropout", "embed2"])
def test_input_products_inside_or_before_the_loop_agree(model):
    """Both placements of the input product (jax_impl._forward) give the reference's logits and
    gradients, and the same dropout masks; B = 8 is where the default places it inside the loop
    for one-hot input (the conformance suite's windows are smaller)."""
    p = init_params(model, 1)
    tok, tgt = _tokens(model, 8, 6)
    zeros = np.zeros((model.num_layers, 8, model.hidden_size))
    out = {}
    for hoist in (True, False, None):
        be = ji.JaxBackend(model, TrainConfig(), p, seed=4, hoist=hoist)
        out[hoist] = be.loss_and_grads(be.put(tok), be.put(tgt), be.state(zeros, zeros))
    for hoist in (False, None):
        assert out[hoist][0] == pytest.approx(out[True][0], rel=1e-6)
        for k, g in out[True][3].items():
            np.testing.assert_allclose(out[hoist][3][k], g, rtol=1e-5, atol=1e-7, err_msg=k)
    import dataclasses
    m0 = dataclasses.replace(model, dropout=0.0)
    ref = registry.create("numpy", m0, TrainConfig(), p)
    want, _ = ref.forward(ref.put(tok), ref.state(zeros, zeros))
    for hoist in (True, False):
        be = ji.JaxBackend(m0, TrainConfig(), p, hoist=hoist)
        logits, _ = be.forward(be.put(tok), be.state(zeros, zeros))
        np.testing.assert_allclose(logits, want, rtol=2e-5, atol=1e-6)
    small = ji._Static(model, TrainConfig(), "float32", "float32", 1)
    assert small.hoist is None and ji.HOIST_BELOW_B == 8


def test_gpu_absent_raises_value_error():
    try:
        jax.devices("gpu")
        pytest.skip("a GPU is visible to JAX here")
    except RuntimeError:
        pass
    m = ModelConfig(5, 3)
    with pytest.raises(ValueError, match="no GPU"):
        ji.JaxBackend(m, TrainConfig(), init_params(m, 0), device="gpu")
    with pytest.raises(ValueError, match="no GPU"):
        ji.configure(None, "gpu")


def test_configure_one_thread_in_a_fresh_process():
    code = ("import json, os; from impls import jax_impl as j; "
            "info = j.configure(1, 'cpu'); "
            "print(json.dumps({**info, 'flags': os.environ.get('XLA_FLAGS', ''), "
            "'cpus': len(os.sched_getaffinity(0))}))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    info = json.loads(out.strip().splitlines()[-1])
    assert info["kernel"] == "XLA:CPU" and info["version"] == jax.__version__
    assert "--xla_cpu_multi_thread_eigen=false" in info["flags"]
    assert info["cpus"] == 1 and info["threads"].startswith("1:")

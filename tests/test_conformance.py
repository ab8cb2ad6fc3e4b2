"""The one behaviour suite every backend must pass, parametrised over the registry
(impls/registry.py): a backend gets all of it by having a BackendSpec. LSTMBENCH_BACKENDS
(comma list) narrows it, as each tox environment does.

- the interface: registry.create returns an impls.base.Backend (runtime Protocol check and
  every method's arity);
- the cross-checks: every case of harness/commands/check_cases.py against the float64 reference, within
  impls/tolerances.py's float32 row (docs/SPEC.md §8, §9), a documented native optimiser
  formula proven as the only cause of its difference;
- load/params round trip, exact;
- one training step moves every trainable parameter tensor;
- carried state: a window split in two with the state carried equals the whole window, and
  train_step's returned state is the forward state, carried into the next step as the
  reference does;
- dropout: eval ignores it (deterministic, equal to p = 0), train applies it (loss differs
  from p = 0, fresh masks per call, the same seed gives the same masks);
- generation: the same uniforms give the same tokens, again and from a fresh backend;
- unsupported modes, devices and precisions are reported by registry.unsupported with the
  reason, and a backend lacking a mode is still created.

A backend whose spec sets env_vars (KERAS_BACKEND=jax) cannot share this process with the
others: test_in_own_process runs this file for it in a child Python with those variables set
(and LSTMBENCH_BACKENDS=<it>); in this process its tests skip, naming that test.

Sizes are tiny (H <= 8, T <= 100): a backend's whole suite takes seconds, compile time
included."""
from __future__ import annotations

import dataclasses
import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from impls import registry
from impls.base import Backend
from impls.case import diff_outputs, format_rows, run_case
from impls.config import ClipConfig, ModelConfig, OptimizerConfig, TrainConfig
from impls.params import Params, init_params
from impls.tolerances import TOLERANCES, rel_error
from tests.conftest import backends_under_test, random_window, reference, require_backend

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = backends_under_test()
F32 = TOLERANCES["float32"]
# sizes chosen so that no two dimensions coincide
EMBED = ModelConfig(vocab_size=11, hidden_size=5, num_layers=2, input="embedding", embed_size=4)
ONEHOT = ModelConfig(vocab_size=9, hidden_size=6, num_layers=3)
MODELS = pytest.mark.parametrize("model", [EMBED, ONEHOT], ids=["embed2", "onehot3"])
ADAM = TrainConfig(OptimizerConfig("adam", lr=0.01), ClipConfig("norm", 1.0))
SGD = TrainConfig(OptimizerConfig("sgd", lr=0.5), ClipConfig("norm", 5.0))


def _create(backend: str, model: ModelConfig, train: TrainConfig, params: Params | None = None,
            **kw) -> Backend:
    return registry.create(backend, model, train, init_params(model, 0) if params is None else params, **kw)


def _reference(backend: str, model: ModelConfig, train: TrainConfig, params: Params) -> Backend:
    """The float64 reference, with the backend's documented native optimiser formula where
    its spec names one (registry Deviation)."""
    dev = registry.get_spec(backend).deviations.get(train.optimizer.name)
    kw = {"eps_form": dev.eps_form} if dev else {}
    return registry.create("numpy", model, train, params, **kw)


def _close(a: np.ndarray, r: np.ndarray, quantity: str, what: str) -> None:
    rel, mx = rel_error(np.asarray(a), np.asarray(r))
    tol = F32[quantity].rel
    assert rel <= tol, f"{what}: rel. error {rel:.2e} (max |diff| {mx:.2e}) > {tol:.0e}"


# ---- the registry entry and the interface -------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_spec_supports_what_it_lists(backend):
    spec = registry.get_spec(backend)
    for mode in spec.modes:
        assert registry.unsupported(backend, mode=mode) is None
    for device in spec.devices:
        assert registry.unsupported(backend, device=device) is None
    for precision in spec.precisions:
        assert registry.unsupported(backend, precision=precision) is None
    assert set(spec.kwargs).isdisjoint({"device", "dtype", "seed"}), "create passes these itself"


def _arity(fn) -> tuple[int, float]:
    """(required, maximum) positional arguments of a bound method."""
    ps = list(inspect.signature(fn).parameters.values())
    pos = [p for p in ps if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    req = [p for p in pos if p.default is p.empty]
    var = any(p.kind == p.VAR_POSITIONAL for p in ps)
    return len(req), float("inf") if var else len(pos)


PROTOCOL_METHODS = {name: len(inspect.signature(fn).parameters) - 1  # minus self
                    for name, fn in vars(Backend).items()
                    if callable(fn) and not name.startswith("_")}


def test_protocol_is_what_base_documents():
    assert PROTOCOL_METHODS == {
        "load": 1, "params": 0, "put": 1, "state": 2, "fetch_state": 1, "forward": 2,
        "loss_and_grads": 3, "eval_step": 3, "train_step": 3, "generate": 5, "sync": 0, "value": 1}


@pytest.mark.parametrize("backend", BACKENDS)
def test_create_returns_the_backend_interface(backend):
    require_backend(backend)
    be = _create(backend, EMBED, ADAM)
    assert isinstance(be, Backend), f"{type(be).__name__} lacks a member of impls.base.Backend"
    assert be.model == EMBED and be.train == ADAM
    for name, n in PROTOCOL_METHODS.items():
        req, most = _arity(getattr(be, name))
        assert req <= n <= most, f"{backend}.{name} takes {req}..{most} positional arguments, the contract {n}"


# ---- the cross-checks (docs/SPEC.md §9) ----------------------------------------------------

def _outputs(case, be, spec: registry.BackendSpec) -> dict[str, np.ndarray]:
    """run_case with the backend's modes: without train mode, forward, state, the eval loss
    and generation (impls.case.needs_training names what it cannot give)."""
    return run_case(case, be, spec.modes)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_matches_reference(backend, cross_case):
    require_backend(backend)
    case, expected = reference(cross_case)
    spec = registry.get_spec(backend)
    be = registry.create(backend, case.spec.model, case.spec.train, case.params)
    out = _outputs(case, be, spec)
    expected = {k: v for k, v in expected.items() if k in out or "train" in spec.modes}
    dev = spec.deviations.get(case.spec.train.optimizer.name)
    rows = diff_outputs(out, expected, "float32", dev.cause if dev else "")
    failed = [r for r in rows if r.status == "FAIL"]
    assert not failed, f"{backend} on {cross_case.id}:\n" + format_rows(failed)
    if dev is not None and "train" in spec.modes:
        native = registry.create("numpy", case.spec.model, case.spec.train, case.params,
                                 eps_form=dev.eps_form)
        rows = diff_outputs(out, run_case(case, native), "float32")
        failed = [r for r in rows if r.status == "FAIL"]
        assert not failed, (f"{backend} on {cross_case.id} differs from the reference with its "
                            f"native formula ({dev.eps_form}):\n" + format_rows(failed))


# ---- parameters ----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@MODELS
def test_load_params_round_trip_is_exact(backend, model):
    """Canonical -> native -> canonical loses nothing a float32 value holds, both ways."""
    require_backend(backend)
    p32 = {k: v.astype(np.float32).astype(np.float64) for k, v in init_params(model, 3).items()}
    be = _create(backend, model, ADAM)
    be.load(p32)
    out = be.params()
    assert set(out) == set(p32)
    for k in p32:
        assert out[k].dtype == np.float64 and out[k].shape == p32[k].shape, k
        np.testing.assert_array_equal(out[k], p32[k], err_msg=k)
    be.load(out)  # and back again
    for k, v in be.params().items():
        np.testing.assert_array_equal(v, p32[k], err_msg=k)


@pytest.mark.parametrize("backend", BACKENDS)
@MODELS
@pytest.mark.parametrize("train", [SGD, ADAM], ids=["sgd", "adam"])
def test_training_moves_every_parameter(backend, model, train):
    """One train_step changes every parameter tensor (all, not any: a tensor left out of the
    optimiser or the gradient would stay put), to where the reference moves it."""
    require_backend(backend, "train")
    p = init_params(model, 1)
    be = _create(backend, model, train, p)
    ref = _reference(backend, model, train, p)
    tok, tgt, h, c = random_window(model, B=3, T=6)
    loss, _ = be.train_step(be.put(tok), be.put(tgt), be.state(h, c))
    ref.train_step(ref.put(tok), ref.put(tgt), ref.state(h, c))
    assert np.isfinite(be.value(loss))
    after, want = be.params(), ref.params()
    p32 = {k: v.astype(np.float32).astype(np.float64) for k, v in p.items()}
    frozen = [k for k in p if np.array_equal(after[k], p32[k])]
    assert not frozen, f"{backend}: train_step did not move {frozen}"
    for k in p:  # and to where the reference moved it
        _close(after[k], want[k], "steps", f"{backend} {k} after one step")


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_resets_the_optimiser(backend):
    require_backend(backend, "train")
    p = init_params(EMBED, 1)
    tok, tgt, h, c = random_window(EMBED)
    a = _create(backend, EMBED, ADAM, p)
    st = a.state(h, c)
    for _ in range(3):
        _, st = a.train_step(a.put(tok), a.put(tgt), st)
    a.load(p)  # back to step 0: moments and t reset
    b = _create(backend, EMBED, ADAM, p)
    la, _ = a.train_step(a.put(tok), a.put(tgt), a.state(h, c))
    lb, _ = b.train_step(b.put(tok), b.put(tgt), b.state(h, c))
    assert a.value(la) == b.value(lb)
    pa, pb = a.params(), b.params()
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


# ---- carried state ----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@MODELS
def test_state_carried_between_windows_equals_one_window(backend, model):
    """forward over w1 then w2 from the state w1 ended in == forward over w1 + w2."""
    require_backend(backend)
    be = _create(backend, model, ADAM)
    tok, _, h, c = random_window(model, B=2, T=9, seed=3)
    full, st_full = be.forward(be.put(tok), be.state(h, c))
    a, st_a = be.forward(be.put(tok[:, :4]), be.state(h, c))
    b, st_b = be.forward(be.put(tok[:, 4:]), st_a)  # the backend's own state, carried
    _close(np.concatenate([a, b], axis=1), full, "forward", f"{backend} logits, split window")
    for x, y, n in zip(be.fetch_state(st_b), be.fetch_state(st_full), "hc"):
        _close(x, y, "forward", f"{backend} final {n}, split window")


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_step_carries_state_like_the_reference(backend):
    """train_step returns the window's final state (before the update), and feeding it to
    the next step gives the reference's losses and parameters (truncated BPTT)."""
    require_backend(backend, "train")
    model, p = ONEHOT, init_params(ONEHOT, 2, scale=0.5)
    be, ref = _create(backend, model, ADAM, p), _reference(backend, model, ADAM, p)
    w1, _, h, c = random_window(model, B=2, T=7, seed=4)
    w2, t2, _, _ = random_window(model, B=2, T=7, seed=5)
    t1 = np.roll(w1, -1, axis=1)
    _, fwd = be.forward(be.put(w1), be.state(h, c))
    want_fwd = be.fetch_state(fwd)
    l1, st = be.train_step(be.put(w1), be.put(t1), be.state(h, c))
    for x, y, n in zip(be.fetch_state(st), want_fwd, "hc"):
        _close(x, y, "forward", f"{backend} {n} returned by train_step vs forward")
    l2, st = be.train_step(be.put(w2), be.put(t2), st)  # carried
    r1, rst = ref.train_step(ref.put(w1), ref.put(t1), ref.state(h, c))
    r2, rst = ref.train_step(ref.put(w2), ref.put(t2), rst)
    _close(np.array([be.value(l1), be.value(l2)]), np.array([r1, r2]), "steps", f"{backend} losses")
    for x, y, n in zip(be.fetch_state(st), ref.fetch_state(rst), "hc"):
        _close(x, y, "steps", f"{backend} {n} after two carried steps")
    got, want = be.params(), ref.params()
    for k in want:
        _close(got[k], want[k], "steps", f"{backend} {k} after two carried steps")


# ---- dropout ------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_only_in_train_mode(backend):
    """Embedding input, 2 layers: dropout sits before both LSTM layers and the output."""
    require_backend(backend)
    model = EMBED
    drop = dataclasses.replace(model, dropout=0.5)
    p = init_params(model, 0)
    be, be0 = _create(backend, drop, SGD, p, seed=1), _create(backend, model, SGD, p, seed=1)
    tok, tgt, h, c = random_window(model)
    T, G = be.put(tok), be.put(tgt)
    # eval: no dropout, no randomness, the p = 0 result
    f1, _ = be.forward(T, be.state(h, c))
    f2, _ = be.forward(T, be.state(h, c))
    np.testing.assert_array_equal(f1, f2)
    f0, _ = be0.forward(be0.put(tok), be0.state(h, c))
    _close(f1, f0, "forward", f"{backend} eval logits with p = 0.5 vs p = 0")
    e1, e2 = (be.value(be.eval_step(T, G, be.state(h, c))[0]) for _ in range(2))
    e0 = be0.value(be0.eval_step(be0.put(tok), be0.put(tgt), be0.state(h, c))[0])
    assert e1 == e2
    _close(np.array(e1), np.array(e0), "loss", f"{backend} eval loss with p = 0.5 vs p = 0")
    if registry.unsupported(backend, mode="train"):
        return
    # train: masks applied, fresh per call
    a = be.loss_and_grads(T, G, be.state(h, c))[0]
    b = be.loss_and_grads(T, G, be.state(h, c))[0]
    z = be0.loss_and_grads(be0.put(tok), be0.put(tgt), be0.state(h, c))[0]
    assert np.isfinite(a) and np.isfinite(b)
    _close(np.array(z), np.array(e0), "loss", f"{backend} p = 0 train loss vs eval loss")
    assert a != z and b != z, f"{backend}: dropout p = 0.5 did not change the train loss"
    assert a != b, f"{backend}: two train passes drew the same dropout masks"
    loss, _ = be.train_step(T, G, be.state(h, c))
    assert np.isfinite(be.value(loss))
    g1, g2 = (be.value(be.eval_step(T, G, be.state(h, c))[0]) for _ in range(2))
    assert g1 == g2  # still deterministic after training


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_dropout_masks(backend):
    require_backend(backend, "train")
    model = dataclasses.replace(EMBED, dropout=0.3)
    tok, tgt, h, c = random_window(model)
    losses = []
    for _ in range(2):
        be = _create(backend, model, ADAM, seed=7)
        losses.append(be.loss_and_grads(be.put(tok), be.put(tgt), be.state(h, c))[0])
    assert losses[0] == losses[1]


# ---- generation (docs/SPEC.md §5) ----------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature,top_k", [(0.0, 0), (1.0, 0), (0.8, 3)])
def test_generation_is_deterministic(backend, temperature, top_k):
    require_backend(backend, "generate")
    model = EMBED
    p = init_params(model, 4, scale=0.8)  # peaked, varied distributions
    u = np.random.default_rng(9).random(16)
    prefix = np.array([3, 1, 4])
    be = _create(backend, model, ADAM, p)
    a = np.asarray(be.generate(prefix, 16, temperature, top_k, u))
    b = np.asarray(be.generate(prefix, 16, temperature, top_k, u))
    c = np.asarray(_create(backend, model, ADAM, p).generate(prefix, 16, temperature, top_k, u))
    assert a.shape == (16,) and a.dtype.kind == "i"
    assert a.tolist() == b.tolist() == c.tolist()
    assert a.min() >= 0 and a.max() < model.vocab_size
    ref = registry.create("numpy", model, ADAM, p)
    assert a.tolist() == ref.generate(prefix, 16, temperature, top_k, u).tolist()


# ---- what a backend cannot do ----------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_unsupported_combinations_are_reported(backend):
    spec = registry.get_spec(backend)
    for mode in registry.MODES:
        why = registry.unsupported(backend, mode=mode)
        assert (why is None) == (mode in spec.modes)
        if why:
            assert mode in why and backend in why, why
    for device in registry.DEVICES:
        why = registry.unsupported(backend, device=device)
        assert (why is None) == (device in spec.devices)
        if why:
            assert device in why, why
    assert registry.unsupported(backend, precision="tf32", device="cpu") is not None
    missing = [m for m in registry.MODES if m not in spec.modes]
    if not missing:
        return
    require_backend(backend)
    be = _create(backend, EMBED, ADAM)  # creating never fails for a missing mode
    tok, tgt, h, c = random_window(EMBED)
    calls = {"train": lambda: be.train_step(be.put(tok), be.put(tgt), be.state(h, c)),
             "eval": lambda: be.eval_step(be.put(tok), be.put(tgt), be.state(h, c)),
             "generate": lambda: be.generate(np.array([1]), 3, 1.0, 0, np.full(3, 0.5))}
    for m in missing:
        with pytest.raises(NotImplementedError):
            calls[m]()


def test_unsupported_is_driven_by_the_spec(monkeypatch):
    """An eval-only variant exists by its entry alone, and says why it does not train."""
    spec = dataclasses.replace(registry.get_spec("numpy-f32"), name="numpy-evalonly",
                               modes=("eval", "generate"))
    monkeypatch.setitem(registry.BACKENDS, spec.name, spec)
    assert registry.unsupported("numpy-evalonly", mode="train") == \
        "backend numpy-evalonly has no train mode (it runs eval, generate)"
    assert registry.unsupported("numpy-evalonly", mode="eval", device="cpu") is None
    assert "gpu" in registry.unsupported("numpy-evalonly", device="gpu")
    assert "tf32" in registry.unsupported("numpy-evalonly", precision="tf32")
    be = registry.create("numpy-evalonly", EMBED, ADAM, init_params(EMBED, 0))
    assert isinstance(be, Backend)
    with pytest.raises(registry.BackendError, match="does not run on gpu"):
        registry.create("numpy-evalonly", EMBED, ADAM, init_params(EMBED, 0), device="gpu")
    with pytest.raises(ValueError, match="subset"):
        dataclasses.replace(spec, modes=("train", "fly"))


def test_env_vars_are_required_in_process(monkeypatch):
    spec = dataclasses.replace(registry.get_spec("numpy-f32"), name="numpy-env",
                               env_vars={"LSTMBENCH_TEST_ENV": "on"})
    monkeypatch.setitem(registry.BACKENDS, spec.name, spec)
    monkeypatch.delenv("LSTMBENCH_TEST_ENV", raising=False)
    assert "LSTMBENCH_TEST_ENV=on" in registry.env_mismatch("numpy-env")
    with pytest.raises(registry.BackendError, match="LSTMBENCH_TEST_ENV=on"):
        registry.create("numpy-env", EMBED, ADAM, init_params(EMBED, 0))
    monkeypatch.setenv("LSTMBENCH_TEST_ENV", "on")
    assert registry.env_mismatch("numpy-env") is None
    assert isinstance(registry.create("numpy-env", EMBED, ADAM, init_params(EMBED, 0)), Backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hooks_are_well_formed(backend):
    """Each hook a backend module offers answers in the contract's types (CPU answers)."""
    require_backend(backend)
    with pytest.raises(ValueError, match="unknown hook"):
        registry.hook(backend, "kernel")
    info = registry.hook(backend, "kernel_info")
    if info is not None:
        got = info(backend, "cpu")
        assert isinstance(got, dict) and all(isinstance(v, str) for v in got.values())
        assert got.get("kernel"), f"{backend}: kernel_info gives no kernel"
    peak = registry.hook(backend, "device_peak_memory")
    if peak is not None:
        assert peak("cpu", True) is None and peak("cpu", False) is None  # GPU counters only
    mm = registry.hook(backend, "device_matmul_peak")
    if mm is not None:
        assert mm("cpu") is None


# ---- backends that need their own process ----------------------------------------------------------

ENV_BACKENDS = [b for b in BACKENDS if registry.get_spec(b).env_vars]


@pytest.mark.parametrize("backend", ENV_BACKENDS or [pytest.param("-", marks=pytest.mark.skip(
    reason="no backend under test sets env_vars"))])
def test_in_own_process(backend):
    """This suite, for one backend whose spec sets env_vars, in a child Python whose
    environment has them (as the harness's worker for it has)."""
    spec = registry.get_spec(backend)
    if registry.env_mismatch(backend) is None:
        pytest.skip(f"{backend}'s env_vars are set in this process: its tests ran here")
    env = dict(os.environ, **spec.env_vars, LSTMBENCH_BACKENDS=backend)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           str(Path(__file__).relative_to(ROOT))],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
    assert proc.returncode == 0, f"{backend} in its own process ({' '.join(f'{k}={v}' for k, v in spec.env_vars.items())}):\n{tail}"

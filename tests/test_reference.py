"""The NumPy reference: gradients against central finite differences, optimisers and clipping
against hand-computed values, sampling against hand-computed draws, and agreement with the
independent implementation in tests/independent.py through case files."""
from __future__ import annotations

import numpy as np
import pytest

from impls.case import load_case, make_case, run_case, save_case
from impls.config import (CaseSpec, ClipConfig, ConfigError, GenerateConfig, ModelConfig,
                          OptimizerConfig, TrainConfig, flops_per_char, macs_per_char)
from impls.numpy_impl import NumpyBackend
from impls.params import init_params, param_shapes
from impls.sampling import draw
from impls.tolerances import rel_error
from tests import independent

FD_CONFIGS = [
    pytest.param(ModelConfig(6, 4), 2, 8, False, id="onehot-1layer"),
    pytest.param(ModelConfig(7, 5, 2, "embedding", 3), 3, 10, False, id="embed-2layers"),
    pytest.param(ModelConfig(5, 4, 3), 2, 30, False, id="onehot-3layers-T30"),
    pytest.param(ModelConfig(6, 3, 2, "embedding", 4), 2, 35, False, id="embed-2layers-T35"),
]


def _fd_setup(m: ModelConfig, B: int, T: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    p = init_params(m, seed, scale=0.5)  # large enough that deep gradients do not vanish
    tok, tgt = rng.integers(0, m.vocab_size, (2, B, T))
    h0 = rng.uniform(-0.5, 0.5, (m.num_layers, B, m.hidden_size))  # a non-zero initial state
    c0 = rng.uniform(-1, 1, h0.shape)
    return p, tok, tgt, h0, c0


@pytest.mark.parametrize("m,B,T,_", FD_CONFIGS)
def test_gradients_match_central_differences(m, B, T, _):
    p, tok, tgt, h0, c0 = _fd_setup(m, B, T)
    be = NumpyBackend(m, TrainConfig(), p)
    tk, tg = be.put(tok), be.put(tgt)
    _, _, _, grads, dh0, dc0 = be.loss_and_grads_full(tk, tg, (h0, c0))

    def loss_at(q, h, c):
        be.load(q)
        return be.eval_step(tk, tg, (h, c))[0]

    eps = 1e-5
    for name in param_shapes(m):
        num = np.zeros_like(p[name])
        for j in range(num.size):
            q = {k: v.copy() for k, v in p.items()}
            q[name].flat[j] += eps
            up = loss_at(q, h0, c0)
            q[name].flat[j] -= 2 * eps
            num.flat[j] = (up - loss_at(q, h0, c0)) / (2 * eps)
        rel, _ = rel_error(grads[name], num)
        assert rel < 1e-6, f"grad/{name}: relative error {rel:.2e} against finite differences"
    for which, g, base in (("h0", dh0, h0), ("c0", dc0, c0)):
        num = np.zeros_like(base)
        for j in range(base.size):
            a, b = base.copy(), base.copy()
            a.flat[j] += eps
            b.flat[j] -= eps
            args_up = (a, c0) if which == "h0" else (h0, a)
            args_dn = (b, c0) if which == "h0" else (h0, b)
            num.flat[j] = (loss_at(p, *args_up) - loss_at(p, *args_dn)) / (2 * eps)
        rel, _ = rel_error(g, num)
        assert rel < 1e-6, f"grad/{which}: relative error {rel:.2e} against finite differences"


def _one_param_backend(opt: OptimizerConfig, clip: ClipConfig = ClipConfig()) -> NumpyBackend:
    m = ModelConfig(2, 1)
    return NumpyBackend(m, TrainConfig(opt, clip), init_params(m, 0))


def _apply(be: NumpyBackend, grads: list[dict[str, np.ndarray]]) -> None:
    for g in grads:
        g = {k: v.copy() for k, v in g.items()}
        be._clip(g)
        be._update(g)


@pytest.mark.parametrize("opt,expected", [
    # p0 = 1, gradients 0.5 then -0.25; values computed by hand from docs/SPEC.md §4
    (OptimizerConfig("sgd", lr=0.1), 1 - 0.1 * 0.5 + 0.1 * 0.25),  # 0.975
    # adam step 1: mhat = g, vhat = g^2 -> step lr*sign = 0.1; step 2: m = 0.9*0.05 - 0.025 = 0.02,
    # v = 0.999*0.00025 + 0.001*0.0625 = 0.00031225; mhat = 0.02/0.19, vhat = 0.00031225/0.001999
    (OptimizerConfig("adam", lr=0.1, eps=1e-8),
     1 - 0.1 * 0.5 / (0.5 + 1e-8) - 0.1 * (0.02 / 0.19) / (np.sqrt(0.00031225 / 0.001999) + 1e-8)),
    # rmsprop a=0.9: v1 = 0.1*0.25 = 0.025; v2 = 0.0225 + 0.1*0.0625 = 0.02875
    (OptimizerConfig("rmsprop", lr=0.01, alpha=0.9, eps=1e-8),
     1 - 0.01 * 0.5 / (np.sqrt(0.025) + 1e-8) + 0.01 * 0.25 / (np.sqrt(0.02875) + 1e-8)),
    # adagrad: s1 = 0.25, s2 = 0.3125
    (OptimizerConfig("adagrad", lr=0.1, eps=1e-8),
     1 - 0.1 * 0.5 / (0.5 + 1e-8) + 0.1 * 0.25 / (np.sqrt(0.3125) + 1e-8)),
])
def test_optimisers_match_hand_computed_values(opt, expected):
    be = _one_param_backend(opt)
    be.p = {k: np.ones_like(v) for k, v in be.p.items()}
    _apply(be, [{k: np.full_like(v, 0.5) for k, v in be.p.items()},
                {k: np.full_like(v, -0.25) for k, v in be.p.items()}])
    for k, v in be.p.items():
        np.testing.assert_allclose(v, expected, rtol=1e-12, err_msg=k)


def test_norm_clip_scales_all_parameters_together():
    be = _one_param_backend(OptimizerConfig("sgd", lr=1.0), ClipConfig("norm", 1.0))
    g = {k: np.zeros_like(v) for k, v in be.p.items()}
    g["out.W"][0, 0], g["out.b"][1] = 3.0, 4.0  # global norm 5 -> scale 0.2
    be._clip(g)
    assert g["out.W"][0, 0] == pytest.approx(0.6) and g["out.b"][1] == pytest.approx(0.8)
    small = {k: np.full_like(v, 0.01) for k, v in be.p.items()}  # norm < 1: untouched
    be._clip(small)
    assert all(np.all(v == 0.01) for v in small.values())


def test_value_clip_is_elementwise():
    be = _one_param_backend(OptimizerConfig("sgd"), ClipConfig("value", 0.3))
    g = {k: np.linspace(-1, 1, v.size).reshape(v.shape) for k, v in be.p.items()}
    be._clip(g)
    w = np.linspace(-1, 1, g["out.b"].size)
    np.testing.assert_array_equal(g["out.b"], np.clip(w, -0.3, 0.3))


def test_native_eps_forms_differ_as_documented():
    """eps_hat and eps_inside reproduce Keras/Chainer formulas; check one hand value each."""
    for form, opt, expected in (
            ("eps_hat", OptimizerConfig("adam", lr=0.1, eps=0.1), 1 - 0.1 * np.sqrt(0.001) / 0.1 * 0.05 / (np.sqrt(0.00025) + 0.1)),
            ("eps_inside", OptimizerConfig("adagrad", lr=0.1, eps=0.1), 1 - 0.1 * 0.5 / np.sqrt(0.25 + 0.1))):
        m = ModelConfig(2, 1)
        be = NumpyBackend(m, TrainConfig(opt), init_params(m, 0), eps_form=form)
        be.p = {k: np.ones_like(v) for k, v in be.p.items()}
        _apply(be, [{k: np.full_like(v, 0.5) for k, v in be.p.items()}])
        np.testing.assert_allclose(be.p["out.b"], expected, rtol=1e-12)


def test_sampling_matches_hand_computed_draws():
    logits = np.log(np.array([0.1, 0.2, 0.3, 0.4]))  # probabilities at temperature 1
    # cdf = 0.1, 0.3, 0.6, 1.0: u picks the first id whose cdf exceeds it
    assert [draw(logits, 1.0, 0, u) for u in (0.0, 0.09, 0.11, 0.29, 0.31, 0.61, 0.99)] == [0, 0, 1, 1, 2, 3, 3]
    # top-2 keeps 0.3 and 0.4 -> renormalised 3/7, 4/7
    assert [draw(logits, 1.0, 2, u) for u in (0.0, 0.42, 0.43, 0.9)] == [2, 2, 3, 3]
    # temperature 0.5 squares then renormalises: 1, 4, 9, 16 over 30 -> cdf 1/30, 5/30, 14/30
    assert [draw(logits, 0.5, 0, u) for u in (0.03, 0.04, 0.16, 0.17, 0.46, 0.47)] == [0, 1, 1, 2, 2, 3]
    assert draw(logits, 0.0, 0, 0.0) == 3  # greedy
    assert draw(np.array([1.0, 5.0, 5.0]), 1.0, 1, 0.99) == 2  # top-1 with a tie keeps both


def test_float32_path_tracks_float64():
    m = ModelConfig(11, 6, 2)
    spec = CaseSpec(m, TrainConfig(OptimizerConfig("adam", lr=0.01)), 2, GenerateConfig(5))
    case = make_case(spec, 3, 4, 12)
    a = run_case(case, NumpyBackend(m, spec.train, case.params))
    b = run_case(case, NumpyBackend(m, spec.train, case.params, dtype="float32"))
    assert b["logits"].dtype == np.float64  # outputs are float64 at the boundary
    for k in a:
        if k != "generated":
            assert rel_error(b[k], a[k])[0] < 1e-5, k


INDEPENDENT = [
    CaseSpec(ModelConfig(9, 6, 2), TrainConfig(OptimizerConfig("rmsprop", lr=0.01, alpha=0.95),
                                                ClipConfig("value", 0.01)), 3, GenerateConfig(10, 1.0)),
    CaseSpec(ModelConfig(8, 5, 1, "embedding", 4), TrainConfig(OptimizerConfig("adam", lr=0.05),
                                                               ClipConfig("norm", 0.1)), 3, GenerateConfig(8, 0.7, 3)),
    CaseSpec(ModelConfig(7, 4, 3), TrainConfig(OptimizerConfig("adagrad", lr=0.2)), 2, GenerateConfig(6, 0.0)),
    CaseSpec(ModelConfig(10, 3, 2, "embedding", 5), TrainConfig(OptimizerConfig("sgd", lr=2.0),
                                                                ClipConfig("norm", 0.05)), 4, GenerateConfig(9, 1.5)),
]


@pytest.mark.parametrize("spec", INDEPENDENT, ids=lambda s: f"{s.model.input}{s.model.num_layers}-{s.train.optimizer.name}")
def test_reference_agrees_with_independent_implementation(spec, tmp_path):
    case = make_case(spec, 11, 3, 13)
    path = save_case(case, tmp_path / "case.npz")
    ours = run_case(load_case(path), NumpyBackend(spec.model, spec.train, case.params))
    theirs = independent.run_case_file(path)
    assert set(ours) == set(theirs)
    for k in theirs:
        rel, mx = rel_error(ours[k], theirs[k])
        assert rel < 1e-12, f"{k}: {rel:.2e} (max abs {mx:.2e})"


def test_config_validation_names_the_field():
    for kw, field in (({"hidden_size": 0}, "hidden_size"), ({"input": "bytes"}, "input"),
                      ({"num_layers": -1}, "num_layers"), ({"input": "embedding"}, "embed_size")):
        with pytest.raises(ConfigError, match=field):
            ModelConfig(**{"vocab_size": 5, "hidden_size": 3, **kw})
    with pytest.raises(ConfigError, match="optimizer"):
        OptimizerConfig("lbfgs")
    with pytest.raises(ConfigError, match="clip kind"):
        ClipConfig("global")
    with pytest.raises(ConfigError, match="clip value"):
        ClipConfig("norm", 0)


def test_flops_per_char_follow_spec():
    m = ModelConfig(65, 128, 2)  # char-rnn: layer 0 one-hot drops 4H*V
    n = 4 * 128 * 128 + 4 * 128 * (128 + 128) + 128 * 65
    assert macs_per_char(m) == n
    assert flops_per_char(m, "train") == 6 * n and flops_per_char(m, "eval") == 2 * n
    e = ModelConfig(65, 650, 2, "embedding", 650)
    assert macs_per_char(e) == 2 * 4 * 650 * 1300 + 650 * 65


def test_case_written_by_another_tool_loads(tmp_path):
    """docs/SPEC.md §9 as another writer might store it: the spec as bytes, int32 tokens, only the
    optimiser fields it uses; the reference then agrees with the independent implementation."""
    import json
    spec = CaseSpec(ModelConfig(8, 4, 2), TrainConfig(OptimizerConfig("sgd", lr=0.3)), 2, GenerateConfig(4))
    case = make_case(spec, 5, 2, 6)
    arrays = {"spec": np.array(json.dumps({"vocab_size": 8, "hidden_size": 4, "num_layers": 2,
                                           "input": "onehot", "embed_size": 650,
                                           "optimizer": {"name": "sgd", "lr": 0.3},
                                           "clip": {"kind": "none"}, "steps": 2,
                                           "generate": {"n": 4, "temperature": 1.0}}).encode()),
              "tokens": case.tokens.astype(np.int32), "targets": case.targets.astype(np.int32),
              "h0": case.h0, "c0": case.c0, "prefix": case.prefix, "uniforms": case.uniforms,
              **{f"param/{k}": v for k, v in case.params.items()}}
    np.savez(tmp_path / "other.npz", **arrays)
    loaded = load_case(tmp_path / "other.npz")
    assert loaded.spec.model == spec.model and loaded.spec.train == spec.train
    ours = run_case(loaded, NumpyBackend(loaded.spec.model, loaded.spec.train, loaded.params))
    theirs = independent.run_case_file(tmp_path / "other.npz")
    for k in theirs:
        assert rel_error(ours[k], theirs[k])[0] < 1e-12, k

"""What is specific to keras-jax and keras-torch: they need KERAS_BACKEND set before Keras is
imported (the registry refuses to build them in a process without it, naming the fix), and
they are one Keras model definition on two engines: in a child process per engine the same
layers, the same variables in the same shapes, and the same forward pass. (The conformance
suite runs its whole self for them in child processes: tests/test_conformance.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from impls import registry
from impls.config import ModelConfig, TrainConfig
from impls.params import init_params

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, numpy as np, keras
from impls import registry
from impls.config import ModelConfig, TrainConfig
from impls.params import init_params
m = ModelConfig(9, 5, 2, "embedding", 3)
be = registry.create(NAME, m, TrainConfig(), init_params(m, 1))
rng = np.random.default_rng(0)
tok = be.put(rng.integers(0, 9, (2, 4)))
z = np.zeros((2, 2, 5))
logits, _ = be.forward(tok, be.state(z + 0.1, z - 0.1))
u, calls = rng.random(12), []
if keras.backend.backend() == "jax":  # generation: one call of the jitted program
    real = be._j_generate
    be._j_generate = lambda *a, **k: calls.append(1) or real(*a, **k)
gen = be.generate(np.array([1, 2]), 12, 0.9, 0, u).tolist()
ref = registry.create("numpy", m, TrainConfig(), init_params(m, 1)).generate(np.array([1, 2]), 12, 0.9, 0, u)
print(json.dumps({"engine": keras.backend.backend(), "gen": gen, "ref": ref.tolist(), "calls": len(calls),
                  "layers": [type(l).__name__ for l in be.net._flatten_layers(include_self=False)],
                  "vars": [[v.path, list(v.shape)] for v in be.net.trainable_variables],
                  "logits": logits.tolist()}))
"""


def _child(name: str) -> dict:
    spec = registry.get_spec(name)
    env = dict(os.environ, **spec.env_vars)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", CHILD.replace("NAME", repr(name))], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_refused_without_keras_backend_set(monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    m = ModelConfig(7, 4)
    for name, engine in (("keras-jax", "jax"), ("keras-torch", "torch")):
        assert registry.get_spec(name).env_vars == {"KERAS_BACKEND": engine}
        with pytest.raises(registry.BackendError, match=f"KERAS_BACKEND={engine}"):
            registry.create(name, m, TrainConfig(), init_params(m, 0))


def test_one_model_definition_on_two_engines():
    pytest.importorskip("keras")
    got = {name: _child(name) for name in ("keras-jax", "keras-torch")}
    assert got["keras-jax"]["engine"] == "jax" and got["keras-torch"]["engine"] == "torch"
    assert got["keras-jax"]["layers"] == got["keras-torch"]["layers"]
    assert got["keras-jax"]["layers"].count("LSTM") == 2
    assert got["keras-jax"]["vars"] == got["keras-torch"]["vars"]
    a, b = (np.asarray(got[n]["logits"]) for n in ("keras-jax", "keras-torch"))
    assert a.shape == (2, 4, 9)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for n in ("keras-jax", "keras-torch"):  # generation: the reference's tokens
        assert got[n]["gen"] == got[n]["ref"] and len(set(got[n]["gen"])) > 1, n
    assert got["keras-jax"]["calls"] == 1  # the whole sequence in one jitted program

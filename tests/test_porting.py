"""`lstmbench convert` on every ordered pair of formats, and on the files users have.

Each pair converts one model's file of format A into format B through impls.porting, which
verifies it by loading both files with their own frameworks (harness.engine.porting's workers:
torch, Keras on JAX, ONNX Runtime and Orbax/Flax in the main environment, Chainer in its
NumPy < 2 one) on a probe batch. The test then holds B's outputs, as B's framework computed
them, to the float64 reference of the model's canonical parameters, and B's file, read back, to
those parameters: a round trip that could only pass with every layout right. Models: one-hot and
embedding input, 1 and 3 layers, tiny (V = 7, H = 4); Chainer's RNNForLM only where it can
hold the model (embedding, E == H), elsewhere its one-line refusal is what is tested.

One porting session (conftest.port_session) serves every test: one worker start per
environment. Files are written once per model and format and reused across pairs."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.commands.convert import convert
from impls.config import ModelConfig
from impls.params import init_params
from impls.porting import FORMATS, PortError
from impls.porting.model import FORWARD, OUTPUTS, make_probe, ported
from impls.tolerances import PORTING, rel_error

MODELS = {"onehot-1": ModelConfig(7, 4, 1), "onehot-3": ModelConfig(7, 4, 3),
          "embed-1": ModelConfig(7, 4, 1, "embedding", 4), "embed-3": ModelConfig(7, 4, 3, "embedding", 4)}
VOCAB = "\n !abcd"  # sorted, as `lstmbench data` makes them
SUFFIX = {"canonical": ".npz", "torch": ".pt", "keras": ".keras", "chainer": ".npz", "onnx": ".onnx", "flax": ""}
PAIRS = list(itertools.permutations(FORMATS, 2))


def holds(fmt: str, m: ModelConfig) -> bool:
    return not (fmt == "chainer" and m.input != "embedding")


def name(stem: str, fmt: str) -> str:
    return f"{stem}-{fmt}{SUFFIX[fmt]}"


def lstmbench(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The command line as a user runs it (the installed package under tox, else this checkout)."""
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
                          env=e, timeout=600)


@pytest.fixture(scope="module")
def sources(port_session, tmp_path_factory):
    """Every model in every format that can hold it, written once from one set of canonical
    parameters; the float64 reference outputs on the probe convert uses (seed 0)."""
    d = tmp_path_factory.mktemp("sources")
    (d / "vocab.json").write_text(json.dumps(list(VOCAB)))
    files, refs, params = {}, {}, {}
    for key, m in MODELS.items():
        params[key] = init_params(m, seed=3, forget_bias=1.0)
        p = ported("canonical", key, m, params[key], vocab=VOCAB)
        files[key] = {}
        for fmt in FORMATS:
            if holds(fmt, m):
                files[key][fmt] = d / name(key, fmt)
                port_session.write(p, fmt, files[key][fmt])
        probe = make_probe(m.vocab_size, (m.num_layers, m.hidden_size), 0)
        refs[key] = port_session.run(files[key]["canonical"], "canonical", probe)
    return {"dir": d, "files": files, "refs": refs, "params": params}


@pytest.mark.parametrize("src,dst", PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
@pytest.mark.parametrize("model", list(MODELS))
def test_every_pair_round_trips(port_session, sources, tmp_path, model, src, dst):
    m = MODELS[model]
    if not holds(src, m):
        pytest.skip("RNNForLM cannot hold this model: there is no such source file "
                    "(test_chainer_refuses_what_rnnforlm_cannot_hold)")
    out = tmp_path / name(model, dst)
    if not holds(dst, m):
        with pytest.raises(PortError, match="RNNForLM .*cannot hold"):
            convert(port_session, sources["files"][model][src], dst, out, vocab=sources["dir"] / "vocab.json")
        assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left
        return
    res = convert(port_session, sources["files"][model][src], dst, out, vocab=sources["dir"] / "vocab.json")
    assert res.ok and res.failure is None, res.rows
    assert [r.output for r in res.rows] == list(OUTPUTS) and all(r.status == "ok" for r in res.rows)
    a, b = res.outputs
    ref = sources["refs"][model]
    for k in OUTPUTS:  # each framework's own computation against the float64 reference
        assert rel_error(a[k], ref[k])[0] <= FORWARD.rel, (k, src)
        assert rel_error(b[k], ref[k])[0] <= FORWARD.rel, (k, dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # in place; no temporary left
    back = port_session.read(out, dst)
    for k, v in sources["params"][model].items():
        assert rel_error(back.params[k], v)[0] <= PORTING["params"].rel, k


@pytest.mark.parametrize("model", ["onehot-1", "embed-3"])
def test_chainer_refuses_what_rnnforlm_cannot_hold(port_session, sources, tmp_path, model):
    """One-hot input and E != H: one line naming the reason, nothing written."""
    m = ModelConfig(7, 4, 1, "embedding", 3) if model == "embed-3" else MODELS[model]
    src = tmp_path / "m.pt"
    port_session.write(ported("canonical", "m", m, init_params(m, 1)), "torch", src)
    with pytest.raises(PortError) as e:
        convert(port_session, src, "chainer", tmp_path / "c.npz")
    assert "RNNForLM" in str(e.value) and ("one-hot" in str(e.value) or "E = 3 != H = 4" in str(e.value))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_the_vocabulary_travels_where_there_is_room(port_session, sources, tmp_path):
    """canonical -> keras -> onnx -> canonical keeps the vocabulary without --vocab; a format
    without room (torch) needs --vocab on the way back, and refuses without it."""
    f = sources["files"]["embed-1"]
    steps = [("keras", f["canonical"]), ("onnx", tmp_path / name("v", "keras")), ("canonical", tmp_path / name("v", "onnx"))]
    for to, src in steps:
        res = convert(port_session, src, to, tmp_path / name("v", to))
        assert res.ok
    assert port_session.read(tmp_path / name("v", "canonical"), "canonical").vocab == VOCAB
    with pytest.raises(PortError, match="--vocab FILE"):
        convert(port_session, f["torch"], "canonical", tmp_path / "no-vocab.npz")
    (tmp_path / "short.json").write_text(json.dumps(list("abc")))
    with pytest.raises(PortError, match="3 characters, but the model has 7 tokens"):
        convert(port_session, f["torch"], "canonical", tmp_path / "x.npz", vocab=tmp_path / "short.json")

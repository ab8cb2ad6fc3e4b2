"""`lstmbench convert` on files as users make them, in their own frameworks, with names of their
own: a torch module's state_dict (nn.LSTM with batch_first, a stack of single-layer LSTMs, of
nn.LSTMCell, a checkpoint dict, .safetensors, no biases), torch.onnx.export's graphs, Keras
Sequential and Functional models (and .weights.h5), a Flax NNX model with nnx.LSTMCell and a
Dropout, Chainer's RNNForLM saved under L.Classifier. Each is converted, converted back into the
user's own structure with --like, loaded by the user's own code and run: the logits must be the
ones the user's own model computed. And the command line: what a user types, what a conversion
that fails its verification leaves (nothing)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from harness.commands.convert import convert
from harness.commands.crosscheck import crosscheck
from impls.porting.model import FORWARD, make_probe
from impls.tolerances import rel_error
from tests.test_porting import lstmbench

torch = pytest.importorskip("torch")
nn = torch.nn
V, E, H = 9, 6, 6  # E == H: Chainer's RNNForLM can hold it


class MyLM(nn.Module):
    """A user's module: their own attribute names, batch_first, two layers."""

    def __init__(self, layers: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, E)
        self.rnn = nn.LSTM(E, H, layers, batch_first=True)
        self.head = nn.Linear(H, V)

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        return self.head(self.rnn(self.emb(x))[0])


class Stacked(nn.Module):
    """One-hot input, a ModuleList of single-layer LSTMs, a decoder called fc."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.LSTM(V if l == 0 else H, H) for l in range(3)])
        self.fc = nn.Linear(H, V)

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        y = nn.functional.one_hot(x, V).float().transpose(0, 1)  # (T, B, V): time-major LSTMs
        for lstm in self.layers:
            y = lstm(y)[0]
        return self.fc(y.transpose(0, 1))


class Cells(nn.Module):
    """An embedding and two nn.LSTMCell, stepped by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Embedding(V, E)
        self.cells = nn.ModuleList([nn.LSTMCell(E, H), nn.LSTMCell(H, H)])
        self.decoder = nn.Linear(H, V)

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        B = x.shape[0]
        state = [(torch.zeros(B, H), torch.zeros(B, H)) for _ in self.cells]
        out = []
        for t in range(x.shape[1]):
            y = self.encoder(x[:, t])
            for k, cell in enumerate(self.cells):
                state[k] = cell(y, state[k])
                y = state[k][0]
            out.append(self.decoder(y))
        return torch.stack(out, 1)


def logits_of(module: "nn.Module", tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(torch.from_numpy(tokens)).double().numpy()


@pytest.fixture(scope="module")
def probe():
    return make_probe(V, None, seed=0)


def test_your_own_torch_module_to_every_framework_and_back(port_session, tmp_path, probe):
    """Issue 28's "Done when": a state_dict of the user's module, to Keras, Chainer's RNNForLM,
    ONNX and Flax (each verified by its framework's loader), back into the user's module with
    --like, and crosscheck naming the gate blocks swapped in a broken copy."""
    torch.manual_seed(0)
    mine = MyLM()
    torch.save(mine.state_dict(), tmp_path / "mine.pt")
    want = logits_of(mine, probe.tokens)
    for to, out in (("keras", "mine.keras"), ("chainer", "mine_rnnforlm.npz"), ("onnx", "mine.onnx"), ("flax", "mine_flax")):
        res = convert(port_session, tmp_path / "mine.pt", to, tmp_path / out)
        assert res.ok, (to, res.rows)
        back = tmp_path / f"back-from-{to}.pt"
        assert convert(port_session, tmp_path / out, "torch", back, like=tmp_path / "mine.pt").ok
        again = MyLM()
        again.load_state_dict(torch.load(back, weights_only=True), strict=True)  # the user's own names
        assert rel_error(logits_of(again, probe.tokens), want)[0] <= FORWARD.rel, to
    sd = torch.load(tmp_path / "mine.pt", weights_only=True)
    for k in ("rnn.weight_ih_l1", "rnn.weight_hh_l1", "rnn.bias_ih_l1", "rnn.bias_hh_l1"):
        w = sd[k].clone()
        sd[k][H:2 * H], sd[k][2 * H:3 * H] = w[2 * H:3 * H], w[H:2 * H]  # f and g swapped
    torch.save(sd, tmp_path / "broken.pt")
    res = crosscheck(port_session, tmp_path / "mine.pt", tmp_path / "broken.pt")
    assert not res.agree and res.findings == [
        "B's layer 1 gates are in i,g,f,o order where torch means i,f,g,o (rnn.weight_ih_l1, rnn.weight_hh_l1, "
        "rnn.bias_ih_l1 + rnn.bias_hh_l1)"]


@pytest.mark.parametrize("kind", ["stacked", "cells", "checkpoint-dict", "safetensors", "no-bias"])
def test_torch_state_dicts_of_other_shapes(port_session, tmp_path, probe, kind):
    """What lstmbench's reading of the state_dict computes is what the user's module computes;
    --like gives the state_dict back in the user's names."""
    torch.manual_seed(1)
    module = {"stacked": Stacked, "cells": Cells}.get(kind, MyLM)()
    if kind == "no-bias":
        module.rnn = nn.LSTM(E, H, 2, batch_first=True, bias=False)
    src = tmp_path / ("mine.safetensors" if kind == "safetensors" else "mine.pth")
    if kind == "safetensors":
        from safetensors.torch import save_file
        save_file(module.state_dict(), str(src))
    else:
        torch.save({"model": module.state_dict(), "epoch": 3} if kind == "checkpoint-dict" else module.state_dict(), src)
    ours = port_session.run(src, "torch", probe)["logits"]
    assert rel_error(ours, logits_of(module, probe.tokens))[0] <= FORWARD.rel
    assert convert(port_session, src, "onnx", tmp_path / "m.onnx").ok
    if kind != "checkpoint-dict":  # a checkpoint dict's template would be the dict: it gives a state_dict
        back = tmp_path / ("back.safetensors" if kind == "safetensors" else "back.pt")
        assert convert(port_session, tmp_path / "m.onnx", "torch", back, like=src).ok
        if kind == "safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(back))
        else:
            sd = torch.load(back, weights_only=True)
        module.load_state_dict(sd, strict=True)
        assert rel_error(logits_of(module, probe.tokens), ours)[0] <= FORWARD.rel


@pytest.mark.parametrize("kind", ["batch-first-with-state", "time-major", "one-hot"])
def test_torch_onnx_export_is_read(port_session, tmp_path, probe, kind):
    """torch.onnx.export(..., dynamo=False) of the user's module reads, runs in ONNX Runtime
    as the module does, and takes new weights with --like (the user's own graph)."""
    torch.manual_seed(2)

    class WithState(MyLM):
        def forward(self, x, h0, c0):  # type: ignore[override]
            y, (h, c) = self.rnn(self.emb(x), (h0, c0))
            return self.head(y), h, c

    class TimeMajor(MyLM):
        def forward(self, x):  # type: ignore[override]
            return self.head(self.rnn(self.emb(x))[0])

    class OneHot(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn, self.head = nn.LSTM(V, H, batch_first=True), nn.Linear(H, V)

        def forward(self, x):  # type: ignore[override]
            return self.head(self.rnn(nn.functional.one_hot(x, V).float())[0])
    m = {"batch-first-with-state": WithState, "time-major": TimeMajor, "one-hot": OneHot}[kind]()
    path = tmp_path / "export.onnx"
    tok = torch.zeros(2, 5, dtype=torch.long)
    if kind == "batch-first-with-state":
        z = torch.zeros(2, 2, H)
        torch.onnx.export(m, (tok, z, z), str(path), dynamo=False, input_names=["tokens", "h0", "c0"],
                          output_names=["logits", "h", "c"], dynamic_axes={"tokens": {0: "B", 1: "T"},
                                                                           "h0": {1: "B"}, "c0": {1: "B"}})
    elif kind == "time-major":
        m.rnn.batch_first = False
        torch.onnx.export(m, (tok.T,), str(path), dynamo=False, dynamic_axes={"input.1": {0: "T", 1: "B"}})
    else:
        torch.onnx.export(m, (tok,), str(path), dynamo=False, dynamic_axes={"x": {0: "B", 1: "T"}}, input_names=["x"])
    out = port_session.run(path, "onnx", probe)
    with torch.no_grad():
        if kind == "time-major":
            want = m.head(m.rnn(m.emb(torch.from_numpy(probe.tokens.T)))[0]).transpose(0, 1).double().numpy()
        else:
            want = (m(torch.from_numpy(probe.tokens), torch.zeros(2, 2, H), torch.zeros(2, 2, H))[0]
                    if kind == "batch-first-with-state" else m(torch.from_numpy(probe.tokens))).double().numpy()
    assert rel_error(out["logits"], want)[0] <= FORWARD.rel
    assert ("h" in out) == (kind == "batch-first-with-state")
    assert convert(port_session, path, "torch", tmp_path / "m.pt").ok
    assert convert(port_session, tmp_path / "m.pt", "onnx", tmp_path / "again.onnx", like=path).ok


KERAS_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import numpy as np
    import keras
    out, ours = sys.argv[1], sys.argv[2]
    tokens = np.array(json.loads(sys.argv[3]), dtype="int32")
    if keras.backend.backend() == "torch":  # build the user's models
        keras.utils.set_random_seed(0)
        seq = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding({V}, {E}, name="chars"),
                                keras.layers.LSTM({H}, return_sequences=True, name="enc1"), keras.layers.Dropout(0.2),
                                keras.layers.LSTM({H}, return_sequences=True, name="enc2"),
                                keras.layers.Dense({V}, name="logits")], name="my_seq")
        seq.save(os.path.join(out, "user_seq.keras"))
        np.save(os.path.join(out, "user_seq.npy"), keras.ops.convert_to_numpy(seq(tokens)))
        tok = keras.Input((None,), dtype="int32")
        x = keras.layers.CategoryEncoding({V}, output_mode="one_hot")(tok)
        fun = keras.Model(tok, keras.layers.Dense({V})(keras.layers.LSTM({H}, return_sequences=True)(x)))
        fun.save(os.path.join(out, "user_fun.keras"))
        np.save(os.path.join(out, "user_fun.npy"), keras.ops.convert_to_numpy(fun(tokens)))
        marker = os.path.join(out, "lambda-ran")
        lam = keras.Sequential([keras.Input((None,), dtype="int32"),
                                keras.layers.Lambda(lambda t: (open(marker, "w").close(), keras.ops.one_hot(t, {V}))[1]),
                                keras.layers.LSTM({H}, return_sequences=True), keras.layers.Dense({V})])
        lam.save(os.path.join(out, "lambda.keras"))
        if os.path.exists(marker):  # building the model called it on a symbolic tensor
            os.remove(marker)
    else:  # load what lstmbench wrote, on this engine
        m = keras.models.load_model(ours)
        np.save(os.path.join(out, keras.backend.backend() + ".npy"), keras.ops.convert_to_numpy(m(tokens)))
''').replace("{V}", str(V)).replace("{E}", str(E)).replace("{H}", str(H))


@pytest.fixture(scope="module")
def keras_files(port_session, tmp_path_factory, probe):
    """The user's Keras models, built by Keras itself (torch engine), and lstmbench's .keras file
    loaded on the tensorflow engine (Keras's default; the porting worker's own engine is torch):
    two processes, side by side."""
    d = tmp_path_factory.mktemp("keras")
    torch.manual_seed(3)
    torch.save(MyLM().state_dict(), d / "src.pt")
    assert convert(port_session, d / "src.pt", "keras", d / "ours.keras").ok
    (d / "make.py").write_text(KERAS_SCRIPT)
    procs = {b: subprocess.Popen([sys.executable, str(d / "make.py"), str(d), str(d / "ours.keras"),
                                  json.dumps(probe.tokens.tolist())], env={**os.environ, "KERAS_BACKEND": b},
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for b in ("torch", "tensorflow")}
    for b, p in procs.items():
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, (b, out[-2000:])
    return d


def test_our_keras_file_loads_on_another_engine(port_session, keras_files, probe):
    """Written and verified on the torch engine; loaded by a user on TensorFlow."""
    ref = port_session.run(keras_files / "src.pt", "torch", probe)["logits"]
    assert rel_error(np.load(keras_files / "tensorflow.npy"), ref)[0] <= FORWARD.rel


@pytest.mark.parametrize("model", ["user_seq", "user_fun"])
def test_users_keras_models(port_session, keras_files, tmp_path, probe, model):
    """A Sequential (own names, a Dropout) and a Functional one-hot model: read, converted,
    and back as .keras and .weights.h5 in the user's own model (--like)."""
    src = keras_files / f"{model}.keras"
    assert rel_error(port_session.run(src, "keras", probe)["logits"], np.load(keras_files / f"{model}.npy"))[0] <= FORWARD.rel
    assert convert(port_session, src, "onnx", tmp_path / "m.onnx").ok
    assert convert(port_session, tmp_path / "m.onnx", "keras", tmp_path / "back.keras", like=src).ok
    if model == "user_seq":  # weights alone, for the user's own model, and read back with it
        assert convert(port_session, tmp_path / "m.onnx", "keras", tmp_path / "back.weights.h5", like=src).ok
        assert convert(port_session, tmp_path / "back.weights.h5", "torch", tmp_path / "w.pt", like=src).ok
    back = port_session.read(tmp_path / "back.keras", "keras")
    assert back.describe.startswith("Sequential model" if model == "user_seq" else "Functional model")
    if model == "user_seq":
        assert back.names["lstm.0.W_x"] == ["enc1/lstm_cell/kernel"]  # the user's layer names


def test_a_users_flax_model(port_session, tmp_path, probe):
    """nnx.LSTMCell per layer inside nnx.RNN, a Dropout with its random stream: read, and back
    into the user's own class with --like, restored by Orbax the documented way."""
    jax = pytest.importorskip("jax")
    nnx = pytest.importorskip("flax.nnx")
    ocp = pytest.importorskip("orbax.checkpoint")

    class Mine(nnx.Module):
        def __init__(self, rngs):
            self.tok = nnx.Embed(V, E, rngs=rngs)
            self.rnn = nnx.List([nnx.RNN(nnx.LSTMCell(E, H, rngs=rngs)) for _ in range(2)])
            self.drop = nnx.Dropout(0.1, rngs=rngs)
            self.head = nnx.Linear(H, V, rngs=rngs)

        def __call__(self, x):
            y = self.tok(x)
            for r in self.rnn:
                y = r(y)
            return self.head(y)
    m = Mine(nnx.Rngs(4))
    ck = ocp.StandardCheckpointer()
    ck.save(str(tmp_path / "mine"), nnx.split(m)[1])
    ck.wait_until_finished()
    want = np.asarray(m(jax.numpy.asarray(probe.tokens)), np.float64)
    assert rel_error(port_session.run(tmp_path / "mine", "flax", probe)["logits"], want)[0] <= FORWARD.rel
    assert convert(port_session, tmp_path / "mine", "onnx", tmp_path / "m.onnx").ok
    assert convert(port_session, tmp_path / "m.onnx", "flax", tmp_path / "back", like=tmp_path / "mine").ok
    gd, abstract = nnx.split(nnx.eval_shape(lambda: Mine(nnx.Rngs(0))))
    again = nnx.merge(gd, ck.restore(str(tmp_path / "back"), abstract))
    assert rel_error(np.asarray(again(jax.numpy.asarray(probe.tokens)), np.float64), want)[0] <= FORWARD.rel
    ck.close()


CHAINER_SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    import chainer, chainer.links as L
    class RNNForLM(chainer.Chain):  # Chainer's examples/ptb, as users copy it
        def __init__(self, n_vocab, n_units):
            super().__init__()
            with self.init_scope():
                self.embed = L.EmbedID(n_vocab, n_units)
                self.l1 = L.LSTM(n_units, n_units)
                self.l2 = L.LSTM(n_units, n_units)
                self.l3 = L.Linear(n_units, n_vocab)
            for param in self.params():
                param.array[...] = np.random.uniform(-0.1, 0.1, param.shape)
        def forward(self, x):
            return self.l3(self.l2(self.l1(self.embed(x))))
    what, path = sys.argv[1], sys.argv[2]
    tokens = np.array(json.loads(sys.argv[3]), dtype=np.int32)
    np.random.seed(5)
    model = L.Classifier(RNNForLM({V}, {H}))
    if what == "load":
        chainer.serializers.load_npz(path, model)
    with chainer.using_config("train", False):
        logits = np.stack([model.predictor(tokens[:, t]).array for t in range(tokens.shape[1])], 1)
    if what == "save":
        chainer.serializers.save_npz(path, model)
    np.save(path + ".logits.npy", logits)
''').replace("{V}", str(V)).replace("{H}", str(H))


def test_chainers_rnnforlm_under_a_classifier(port_session, tmp_path, probe):
    """Chainer's own save_npz of L.Classifier(RNNForLM) (keys predictor/...): read, and back with
    --like into a file Chainer's load_npz takes into the user's L.Classifier(RNNForLM)."""
    from harness.envs.interpreters import interpreter_for
    py = interpreter_for("chainer")
    (tmp_path / "rnnlm.py").write_text(CHAINER_SCRIPT)
    toks = json.dumps(probe.tokens.tolist())
    r = subprocess.run([py, str(tmp_path / "rnnlm.py"), "save", str(tmp_path / "model.npz"), toks], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    want = np.load(tmp_path / "model.npz.logits.npy")
    assert rel_error(port_session.run(tmp_path / "model.npz", "chainer", probe)["logits"], want)[0] <= FORWARD.rel
    assert convert(port_session, tmp_path / "model.npz", "keras", tmp_path / "m.keras").ok
    assert convert(port_session, tmp_path / "m.keras", "chainer", tmp_path / "back.npz", like=tmp_path / "model.npz").ok
    r = subprocess.run([py, str(tmp_path / "rnnlm.py"), "load", str(tmp_path / "back.npz"), toks], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert rel_error(np.load(tmp_path / "back.npz.logits.npy"), want)[0] <= FORWARD.rel


# ---- the command line ---------------------------------------------------------------------------

def test_convert_as_a_user_types_it(tmp_path):
    torch.manual_seed(6)
    torch.save(MyLM().state_dict(), tmp_path / "mine.pt")
    r = lstmbench("convert", "mine.pt", "--to", "onnx", "--out", "mine.onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "read   mine.pt (torch): state_dict: embedding emb 9 x 6, nn.LSTM rnn (2 layers), nn.Linear head (6 -> 9)" in r.stdout
    assert "logits   from (h0, c0)" in r.stdout and r.stdout.rstrip().endswith(
        "converted mine.pt (torch) -> mine.onnx (onnx): every output within 1e-05")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.onnx", "mine.pt"]


def test_a_conversion_that_fails_its_verification_leaves_nothing(port_session, tmp_path):
    """A writer's slip (injected: two gate blocks swapped, in the NumPy-only canonical writer so
    that no framework need start) is caught by the verification: exit 1, the failing outputs
    shown, no DST and no temporary."""
    from impls.config import ModelConfig
    from impls.params import init_params
    from impls.porting.model import ported
    m = ModelConfig(V, H, 2, "embedding", E)
    port_session.write(ported("canonical", "m", m, init_params(m, 7), vocab="abcdefghi"), "canonical", tmp_path / "ck.npz")
    r = lstmbench("convert", "ck.npz", "--to", "canonical", "--out", "ck2.npz", cwd=tmp_path,
                  env={"LSTMBENCH_TEST_FAULTS": "1", "LSTMBENCH_TEST_PORT_FAULT": "swap-gates"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL" in r.stdout and "verification FAILED: ck2.npz does not compute what ck.npz computes" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz"]


def test_a_keras_lambda_is_never_run(port_session, keras_files, tmp_path):
    """A .keras file with a Lambda layer (Python code): refused by safe_mode, its code not run."""
    from impls.porting import PortError
    with pytest.raises(PortError, match="lstmbench will not run"):
        convert(port_session, keras_files / "lambda.keras", "onnx", tmp_path / "x.onnx")
    assert not (keras_files / "lambda-ran").exists()
    assert list(tmp_path.iterdir()) == []

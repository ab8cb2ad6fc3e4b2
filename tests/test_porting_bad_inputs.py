"""Bad input to `convert` and `crosscheck`, one row each: one `lstmbench: error:` line naming the
problem and the fix, exit 2, nothing written (the folder holds what it held), no traceback.

Rows the command line refuses before any framework starts run as a user runs them (a
subprocess); rows that need a framework to see what is wrong with the file (a GRU's state_dict,
a peephole LSTM in ONNX) go through the same code in the shared porting session
(conftest.port_session), and two of them through the command line as well. Files that would run
code if loaded unsafely (a pickled object, a Keras Lambda) leave a marker when they do: the
marker must not appear."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from harness.commands.convert import convert
from impls.config import ModelConfig
from impls.params import init_params
from impls.porting import PortError
from impls.porting.model import ported

M = ModelConfig(5, 4, 1, "embedding", 4)
ONEHOT = ModelConfig(5, 4, 1)
HIDE = "import sys\nsys.modules['onnxruntime'] = None\n"  # as if onnxruntime were not installed


def lstmbench(*args: str, cwd: Path, env: dict[str, str] | None = None, hide: bool = False) -> subprocess.CompletedProcess:
    e = {**os.environ, **(env or {})}
    if hide:  # a sitecustomize that hides onnxruntime, first on the path
        site = cwd.parent / f"{cwd.name}-site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(HIDE)
        e["PYTHONPATH"] = os.pathsep.join([str(site), *([e["PYTHONPATH"]] if e.get("PYTHONPATH") else [])])
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
                          env=e, timeout=600)


def checkpoint(name: str, m: ModelConfig = M) -> Callable[[Path], None]:
    def build(d: Path) -> None:
        from impls.porting import canonical
        canonical.write(ported("canonical", name, m, init_params(m, 1), vocab="abcde"), d / name)
    return build


def raw(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda d: (d / name).write_bytes(data)


def cut(build: Callable[[Path], None], src: str, dst: str, keep: float) -> Callable[[Path], None]:
    def b(d: Path) -> None:
        build(d)
        data = (d / src).read_bytes()
        (d / dst).write_bytes(data[:int(len(data) * keep)])
        (d / src).unlink()
    return b


def case_file(d: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "harness", "case", "make", "--preset", "tiny", "--seed", "1", "--out",
                        "case.npz"], cwd=d, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def both(*builds: Callable[[Path], None]) -> Callable[[Path], None]:
    def b(d: Path) -> None:
        for x in builds:
            x(d)
    return b


@dataclass
class Row:
    id: str
    args: list[str]
    build: Callable[[Path], None]
    expect: str
    env: dict[str, str] = field(default_factory=dict)
    hide: bool = False


NO_CHAINER = {"LSTMBENCH_PYTHON_CHAINER": "", "HOME": "{d}", "XDG_DATA_HOME": "{d}/data"}
ROWS = [
    Row("unknown-format-to", ["convert", "m.npz", "--to", "tensorflow", "--out", "x"], checkpoint("m.npz"),
        "argument --to: invalid choice: 'tensorflow'"),
    Row("unknown-extension", ["convert", "m.xyz", "--to", "onnx", "--out", "m.onnx"], raw("m.xyz", b"hello"),
        "m.xyz: unknown format (extension .xyz); give --from FORMAT"),
    Row("missing-src", ["convert", "gone.pt", "--to", "onnx", "--out", "m.onnx"], lambda d: None,
        "gone.pt: no such file or folder"),
    Row("empty-src", ["convert", "m.pt", "--to", "onnx", "--out", "m.onnx"], raw("m.pt", b""), "m.pt: the file is empty"),
    Row("truncated-zip", ["convert", "m.pt", "--to", "onnx", "--out", "m.onnx"], cut(checkpoint("c.npz"), "c.npz", "m.pt", 0.6),
        "m.pt: a zip archive that is truncated or corrupt"),
    Row("not-an-npz", ["convert", "m.npz", "--to", "onnx", "--out", "m.onnx"], raw("m.npz", b"\x00" * 64),
        "m.npz: not a NumPy archive (no zip header); it is truncated or corrupt"),
    Row("a-case-file", ["convert", "case.npz", "--to", "onnx", "--out", "m.onnx"], case_file,
        "case.npz: a case file (lstmbench case make), not a model checkpoint"),
    Row("dst-exists", ["convert", "m.npz", "--to", "canonical", "--out", "there.npz"],
        both(checkpoint("m.npz"), raw("there.npz", b"mine")), "--out there.npz exists; choose another name"),
    Row("dst-folder-missing", ["convert", "m.npz", "--to", "onnx", "--out", "nowhere/m.onnx"], checkpoint("m.npz"),
        "the folder nowhere does not exist"),
    Row("dst-name-keras", ["convert", "m.npz", "--to", "keras", "--out", "m.h5"], checkpoint("m.npz"),
        "--out m.h5: a keras file is named *.keras or *.weights.h5"),
    Row("like-of-another-format", ["convert", "m.npz", "--to", "onnx", "--out", "m.onnx", "--like", "t.npz"],
        both(checkpoint("m.npz"), checkpoint("t.npz")), "--like t.npz is a canonical file, but DST is onnx"),
    Row("like-canonical", ["convert", "m.npz", "--to", "canonical", "--out", "o.npz", "--like", "m.npz"], checkpoint("m.npz"),
        "--like: the canonical format's names are fixed"),
    Row("vocab-duplicates", ["convert", "m.npz", "--to", "canonical", "--out", "o.npz", "--vocab", "v.txt"],
        both(checkpoint("m.npz"), raw("v.txt", b"aabcd")), "--vocab v.txt: the vocabulary must be non-empty and hold each character once"),
    Row("vocab-length", ["convert", "m.npz", "--to", "canonical", "--out", "o.npz", "--vocab", "v.json"],
        both(checkpoint("m.npz"), raw("v.json", json.dumps(list("abc")).encode())), "--vocab v.json: 3 characters, but the model has 5 tokens"),
    Row("chainer-cannot-hold", ["convert", "m.npz", "--to", "chainer", "--out", "c.npz"], checkpoint("m.npz", ONEHOT),
        "Chainer's RNNForLM starts with EmbedID(n_vocab, n_units): it cannot hold one-hot input"),
    Row("chainer-environment-missing", ["convert", "m.npz", "--to", "chainer", "--out", "c.npz"], checkpoint("m.npz"),
        "run `lstmbench setup chainer`", env=NO_CHAINER),
    Row("framework-missing", ["convert", "m.npz", "--to", "onnx", "--out", "m.onnx"], checkpoint("m.npz"),
        "the onnx format needs onnxruntime, not installed here: pip install 'lstmbench[onnxruntime]'", hide=True),
    Row("crosscheck-missing-b", ["crosscheck", "m.npz", "gone.onnx"], checkpoint("m.npz"), "gone.onnx: no such file or folder"),
    Row("crosscheck-json-exists", ["crosscheck", "m.npz", "m.npz", "--json", "m.npz"], checkpoint("m.npz"),
        "--json m.npz exists; choose another name"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_refused_before_any_work(tmp_path, row):
    d = tmp_path / "w"
    d.mkdir()
    row.build(d)
    before = sorted(p.name for p in d.iterdir())
    env = {k: v.replace("{d}", str(tmp_path)) for k, v in row.env.items()}
    if "LSTMBENCH_PYTHON_CHAINER" in env and not env["LSTMBENCH_PYTHON_CHAINER"]:
        from harness.envs import interpreters
        found = [c for c in interpreters.env_candidates("chainer") if c.is_file() and interpreters.ROOT in c.parents]
        if found:  # a checkout this code runs from holds one (.tox/chainer after a tox run): it is found
            pytest.skip(f"chainer's environment cannot be absent here: the checkout holds {found[0]}")
        env.pop("LSTMBENCH_PYTHON_CHAINER")
        os_env = {k: v for k, v in os.environ.items() if k != "LSTMBENCH_PYTHON_CHAINER"}
        r = subprocess.run([sys.executable, "-m", "harness", *row.args], cwd=d, capture_output=True, text=True,
                           env={**os_env, **env}, timeout=300)
    else:
        r = lstmbench(*row.args, cwd=d, env=env, hide=row.hide)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr
    assert lines[-1].startswith(("lstmbench: error: ", "lstmbench convert: error: ")), lines
    assert len([ln for ln in lines if "error" in ln]) == 1, lines
    assert row.expect in lines[-1], lines[-1]
    assert sorted(p.name for p in d.iterdir()) == before  # nothing written, no temporary left


# ---- files only a framework can see into ------------------------------------------------------

torch = pytest.importorskip("torch")
nn = torch.nn


class Marker:
    """Unpickling this (what torch.load without weights_only would do) creates the marker file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def sd_of(module: "nn.Module") -> Callable[[Path], None]:
    return lambda d: torch.save(module.state_dict(), d / "m.pt")


class _Seq(nn.Module):
    def __init__(self, rnn: "nn.Module", head_in: int = 4, extra: "nn.Module | None" = None) -> None:
        super().__init__()
        self.emb, self.rnn, self.head = nn.Embedding(5, 4), rnn, nn.Linear(head_in, 5)
        if extra is not None:
            self.extra = extra


def onnx_model(d: Path, op: str = "LSTM", peephole: bool = False, softmax: bool = False) -> None:
    from onnx import TensorProto, helper, numpy_helper
    import onnx
    H, G = 4, 3 if op == "GRU" else 4
    inits = [numpy_helper.from_array(np.zeros((1, G * H, 5), np.float32), "W"),
             numpy_helper.from_array(np.zeros((1, G * H, H), np.float32), "R"),
             numpy_helper.from_array(np.zeros((H, 5), np.float32), "out")]
    ins = ["x", "W", "R"]
    if peephole:
        inits.append(numpy_helper.from_array(np.zeros((1, 3 * H), np.float32), "P"))
        ins += ["", "", "", "", "P"]
    nodes = [helper.make_node("OneHot", ["tok", "depth", "vals"], ["x"], axis=-1),
             helper.make_node(op, ins, ["y"], hidden_size=H),
             helper.make_node("Squeeze", ["y", "ax"], ["y2"]), helper.make_node("MatMul", ["y2", "out"], ["z"])]
    inits += [numpy_helper.from_array(np.array(5, np.int64), "depth"), numpy_helper.from_array(np.array([0, 1], np.float32), "vals"),
              numpy_helper.from_array(np.array([1], np.int64), "ax")]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["p"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("tok", TensorProto.INT64, ["T", "B"])],
                          [helper.make_tensor_value_info("p" if softmax else "z", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), d / "m.onnx")


API_ROWS = {
    "gru": ("m.pt", sd_of(_Seq(nn.GRU(4, 4))), "rnn.weight_hh_l0 is 12 x 4: 3 gate blocks, a GRU"),
    "bidirectional": ("m.pt", sd_of(_Seq(nn.LSTM(4, 4, bidirectional=True), 8)), "rnn is a bidirectional LSTM"),
    "proj-size": ("m.pt", sd_of(_Seq(nn.LSTM(4, 4, proj_size=2), 2)), "rnn is an LSTM with proj_size"),
    "a-cnn": ("m.pt", sd_of(_Seq(nn.LSTM(4, 4), extra=nn.Conv2d(1, 2, 3))), "extra is a convolution (a 4-d weight)"),
    "pickled-module": ("m.pt", lambda d: torch.save({"weights": Marker(str(d / "pwned"))}, d / "m.pt"),
                       "lstmbench loads with torch.load(weights_only=True) and will not run a file's code"),
    "onnx-gru": ("m.onnx", lambda d: onnx_model(d, "GRU"), "the graph runs a GRU operator"),
    "onnx-peepholes": ("m.onnx", lambda d: onnx_model(d, peephole=True), "has peepholes (input P)"),
    "onnx-softmax": ("m.onnx", lambda d: onnx_model(d, softmax=True), "the graph has Softmax node(s): another model"),
    "onnx-corrupt": ("m.onnx", raw("m.onnx", b"\x08\x07garbage" * 10), "m.onnx: not a readable ONNX model"),
    "weights-h5-without-like": ("m.weights.h5", raw("m.weights.h5", b"\x89HDF\r\n\x1a\n" + b"\x00" * 64),
                                "a .weights.h5 file holds weights only; give --like MODEL.keras"),
}


@pytest.mark.parametrize("kind", list(API_ROWS))
def test_files_of_other_models(port_session, tmp_path, kind):
    name, build, expect = API_ROWS[kind]
    build(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(PortError) as e:
        convert(port_session, tmp_path / name, "onnx" if not name.endswith(".onnx") else "torch",
                tmp_path / ("out.onnx" if not name.endswith(".onnx") else "out.pt"))
    assert expect in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path / "pwned").exists()  # nothing in the file ran


def test_a_template_of_other_shapes(port_session, tmp_path):
    checkpoint("m.npz")(tmp_path)
    torch.save(_Seq(nn.LSTM(4, 6), 6).state_dict(), tmp_path / "mine.pt")
    with pytest.raises(PortError, match=r"--like .*mine.pt: its shapes \(embedding 5 x 4 -> 1 x LSTM\(6\) -> linear 5\) "
                                        r"do not match the model's \(embedding 5 x 4 -> 1 x LSTM\(4\) -> linear 5\)"):
        convert(port_session, tmp_path / "m.npz", "torch", tmp_path / "out.pt", like=tmp_path / "mine.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "mine.pt"]


def test_a_file_without_vocabulary_to_canonical(port_session, tmp_path):
    torch.save(_Seq(nn.LSTM(4, 4)).state_dict(), tmp_path / "m.pt")
    with pytest.raises(PortError, match="has none: give --vocab FILE"):
        convert(port_session, tmp_path / "m.pt", "canonical", tmp_path / "c.npz")


def test_the_command_line_refuses_a_pickle_and_a_gru(tmp_path):
    """The same refusals as a user sees them: one line, exit 2, and the pickle's code never ran."""
    API_ROWS["pickled-module"][1](tmp_path)
    r = lstmbench("convert", "m.pt", "--to", "onnx", "--out", "m.onnx", cwd=tmp_path)
    assert r.returncode == 2 and "weights_only=True" in r.stderr.splitlines()[-1] and "Traceback" not in r.stderr
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "m.pt").unlink()
    API_ROWS["gru"][1](tmp_path)
    r = lstmbench("crosscheck", "m.pt", "m.pt", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.splitlines()[-1].startswith("lstmbench: error: ") and "a GRU" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]

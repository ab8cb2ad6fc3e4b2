"""`lstmbench crosscheck`'s diagnoses, each on a deliberately broken file of that kind, in every
format pair where the mistake can occur: A is a good file of the model in each format, B the
broken one in each format that can hold the mistake. Expected findings are written out here by
hand, in each format's own gate letters (docs/SPEC.md §3), not derived from the code.

The broken files are what a porting engineer writes by mistake: gate blocks in the wrong order
in the file's own layout, a weight stored transposed, torch's two biases both holding the bias,
a bias half dropped, a forget bias of 1 added, a vocabulary of another size, layers 1 and 2
swapped, one-hot against embedding input. They are written once each and every pair reuses
them (conftest.port_session caches reads and runs)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from harness.commands.crosscheck import crosscheck
from impls import layouts
from impls.config import ModelConfig
from impls.params import init_params
from impls.porting import FORMATS
from impls.porting.model import ported

M = ModelConfig(7, 4, 3, "embedding", 4)  # E == H: Chainer's RNNForLM holds it; 3 layers: 1 and 2 swap
H = M.hidden_size
ONEHOT = ModelConfig(7, 4, 3)
VOCAB = "\n !abcd"
SUFFIX = {"canonical": ".npz", "torch": ".pt", "keras": ".keras", "chainer": ".npz", "onnx": ".onnx", "flax": ""}
ALL = list(FORMATS)
# gates of B's layer 1 written with the format's last two blocks swapped: (as written, as meant)
GATES = {"canonical": "i,f,o,g order where canonical means i,f,g,o", "torch": "i,f,o,g order where torch means i,f,g,o",
         "keras": "i,f,o,c order where keras means i,f,c,o",
         "chainer": "a,i,o,f order where chainer means a,i,f,o (interleaved per unit)",
         "onnx": "i,o,c,f order where onnx means i,o,f,c", "flax": "i,f,o,g order where flax-optimized means i,f,g,o"}
# the layer-0 input weight each raw-array format stores, and its native shape (4H, D) / (D, 4H)
TRANSPOSED = {"torch": "lstm.weight_ih_l0 is stored transposed: (4, 16), where torch (4H, D) is (16, 4)",
              "chainer": "l1/upward/W is stored transposed: (4, 16), where chainer (4H, D) is (16, 4)",
              "onnx": "lstm.0.W is stored transposed: (1, 4, 16), where onnx (4H, D) is (1, 16, 4)",
              "flax": "cells.0.dense_i.kernel is stored transposed: (16, 4), where flax-optimized (D, 4H) is (4, 16)"}


def swapped_gates(p: dict, fmt: str, layer: int = 1) -> dict:
    """p with layer `layer` written in the format's native storage with its last two gate
    blocks swapped (and, for chainer's "blocked" variant, gate-major instead of interleaved)."""
    row = layouts.LAYOUTS[FORMATS[fmt].layout]
    o = list(row.order)
    o[2], o[3] = o[3], o[2]
    wrote = layouts.Layout("w", "", tuple(o), "", "W_x", "W_h", "b", interleave=row.interleave)
    return _written_as(p, row, wrote, layer)


def _written_as(p: dict, row: layouts.Layout, wrote: layouts.Layout, layer: int) -> dict:
    q = {k: v.copy() for k, v in p.items()}
    pr, pw = layouts.gate_permutation(row, H), layouts.gate_permutation(wrote, H)
    for r in ("W_x", "W_h", "b"):
        a = p[f"lstm.{layer}.{r}"]
        q[f"lstm.{layer}.{r}"] = np.empty_like(a)
        q[f"lstm.{layer}.{r}"][..., pr] = a[..., pw]  # what the format reads back from the native blocks
    return q


@pytest.fixture(scope="module")
def files(port_session, tmp_path_factory):
    """Good files in every format; broken ones are made on first use (`broken`)."""
    d = tmp_path_factory.mktemp("diag")
    P = init_params(M, seed=11, forget_bias=0.5)
    rng = np.random.default_rng(12)
    split = {l: rng.uniform(-0.3, 0.3, 4 * H) for l in range(M.num_layers)}  # a recurrent-side half
    out = {"dir": d, "P": P, "split": split, "made": {}}
    for fmt in ALL:
        out[("good", fmt)] = d / f"good-{fmt}{SUFFIX[fmt]}"
        port_session.write(ported("canonical", "P", M, P, vocab=VOCAB), fmt, out[("good", fmt)])
    Q = init_params(ONEHOT, seed=13)
    for fmt in ALL:
        if fmt != "chainer":
            out[("onehot", fmt)] = d / f"onehot-{fmt}{SUFFIX[fmt]}"
            port_session.write(ported("canonical", "Q", ONEHOT, Q, vocab=VOCAB), fmt, out[("onehot", fmt)])
    # torch and onnx A files whose two biases are both non-zero (b = b_ih + b_hh), as trained torch models hold them
    for fmt in ("torch", "onnx"):
        out[("split", fmt)] = d / f"split-{fmt}{SUFFIX[fmt]}"
        port_session.write(ported("canonical", "P", M, P, vocab=VOCAB), fmt, out[("split", fmt)])
        _native(out[("split", fmt)], fmt, "split", split)
    return out


def _native(path, fmt: str, what: str, split: dict | None = None) -> None:
    """Edit a torch or onnx file's own tensors: split each bias into two non-zero halves,
    store it in both, or transpose layer 0's input weight; chainer's and flax's likewise."""
    if fmt == "torch":
        import torch
        sd = torch.load(path, weights_only=True)
        for l in range(M.num_layers):
            b = sd[f"lstm.bias_ih_l{l}"]
            if what == "split":
                r = torch.from_numpy(layouts.bias_to_native(layouts.TORCH, split[l])).float()
                sd[f"lstm.bias_ih_l{l}"], sd[f"lstm.bias_hh_l{l}"] = b - r, r
            elif what == "twice" and l == 0:
                sd["lstm.bias_hh_l0"] = b.clone()
        if what == "transposed":
            sd["lstm.weight_ih_l0"] = sd["lstm.weight_ih_l0"].T.contiguous()
        path.unlink()
        torch.save(sd, path)
    elif fmt == "onnx":
        import onnx
        from onnx import numpy_helper
        proto = onnx.load(path)
        for i, t in enumerate(proto.graph.initializer):
            a = numpy_helper.to_array(t).copy()
            if t.name.endswith(".B") and what in ("split", "twice"):
                l = int(t.name.split(".")[1])
                if what == "split":
                    r = split[l][layouts.gate_permutation(layouts.ONNX, H)].astype(np.float32)
                    a[0, :4 * H] -= r
                    a[0, 4 * H:] = r
                elif l == 0:
                    a[0, 4 * H:] = a[0, :4 * H]
            elif t.name == "lstm.0.W" and what == "transposed":
                a = np.ascontiguousarray(a.transpose(0, 2, 1))
            else:
                continue
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(a, t.name))
        path.unlink()
        onnx.save(proto, path)
    elif fmt == "chainer":
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["l1/upward/W"] = np.ascontiguousarray(arrays["l1/upward/W"].T)
        path.unlink()
        np.savez_compressed(path, **arrays)  # what chainer.serializers.save_npz writes
    else:  # flax: the Orbax tree as saved, one kernel transposed
        import shutil

        import jax
        import orbax.checkpoint as ocp
        ck = ocp.StandardCheckpointer()
        tree = ck.restore(str(path.resolve()))
        k = tree["cells"]["0"]["dense_i"]["kernel"]
        k["value"] = np.ascontiguousarray(np.asarray(k["value"]).T)
        tree = jax.tree_util.tree_map(lambda x: x, tree)
        shutil.rmtree(path)
        ck.save(str(path.resolve()), tree)
        ck.wait_until_finished()
        ck.close()


def broken(port_session, files, kind: str, fmt: str, a_fmt: str = ""):
    """The broken B file of `kind` in `fmt`, made once."""
    key = (kind, fmt, a_fmt if kind == "missing" else "")
    if key in files["made"]:
        return files["made"][key]
    P, d = files["P"], files["dir"]
    path = d / f"{kind}-{fmt}{'-' + a_fmt if a_fmt and kind == 'missing' else ''}{SUFFIX[fmt]}"
    m, q, vocab = M, None, VOCAB
    if kind == "gates":
        q = swapped_gates(P, fmt)
    elif kind == "blocked":  # chainer only: layer 1 written gate-major i,f,g,o, not interleaved per unit
        q = _written_as(P, layouts.CHAINER, layouts.CANONICAL, 1)
    elif kind in ("transposed",) or (kind == "twice" and fmt in ("torch", "onnx")):
        port_session.write(ported("canonical", "P", M, P, vocab=VOCAB), fmt, path)
        _native(path, fmt, kind)
    elif kind == "twice":
        q = {**P, "lstm.0.b": 2 * P["lstm.0.b"]}
    elif kind == "missing":  # B took only A's input-side bias of layer 0
        q = {**P, "lstm.0.b": P["lstm.0.b"] - files["split"][0]}
    elif kind == "nobias":
        q = {**P, "lstm.0.b": np.zeros(4 * H)}
    elif kind == "forget":
        q = {**P, "lstm.2.b": P["lstm.2.b"] + np.r_[np.zeros(H), np.ones(H), np.zeros(2 * H)]}
    elif kind == "vocab":  # one token more
        m = ModelConfig(8, 4, 3, "embedding", 4)
        q = {**P, "embed": np.vstack([P["embed"], np.full((1, 4), 0.05)]),
             "out.W": np.hstack([P["out.W"], np.full((4, 1), 0.05)]), "out.b": np.r_[P["out.b"], 0.1]}
        vocab = VOCAB + "e"
    elif kind == "swapped":
        q = dict(P)
        for r in ("W_x", "W_h", "b"):
            q[f"lstm.1.{r}"], q[f"lstm.2.{r}"] = P[f"lstm.2.{r}"], P[f"lstm.1.{r}"]
    elif kind == "letters":  # the same numbers, two characters of the vocabulary swapped
        q, vocab = P, VOCAB[:3] + VOCAB[4] + VOCAB[3] + VOCAB[5:]
    if q is not None:
        port_session.write(ported("canonical", kind, m, q, vocab=vocab if FORMATS[fmt].vocab else None), fmt, path)
    files["made"][key] = path
    return path


# kind -> (B formats, the finding expected (format-specific where a function), B cannot run)
CASES = {
    "gates": (ALL, lambda f: f"B's layer 1 gates are in {GATES[f]} (", False),
    "blocked": (["chainer"], lambda f: "B's layer 1 gates are in i,f,a,o order, in blocks of H, where chainer means "
                                       "a,i,f,o interleaved per unit (l2/upward/W, l2/lateral/W, l2/upward/b)", False),
    "transposed": (list(TRANSPOSED), lambda f: f"B's {TRANSPOSED[f]}", True),
    "twice": (ALL, lambda f: {"torch": "B's layer 0 bias (lstm.bias_ih_l0 + lstm.bias_hh_l0) is twice A's: the bias "
                                       "is counted twice: lstm.bias_ih_l0 and lstm.bias_hh_l0 both hold it",
                              "onnx": "B's layer 0 bias (lstm.0.B) is twice A's: the bias is counted twice: the "
                                      "input half of lstm.0.B and the recurrent half of lstm.0.B both hold it"
                              }.get(f, ") is twice A's: the bias is counted twice"), False),
    "nobias": (ALL, lambda f: "B's layer 0 has no bias", False),
    "forget": (ALL, lambda f: "B's layer 2 forget-gate bias", False),
    "vocab": (ALL, lambda f: "vocabulary size: A has V = 7, B has V = 8", False),
    "swapped": (ALL, lambda f: "B's layers 1 and 2 are A's layers 2 and 1: swapped", False),
    "letters": (["keras", "onnx"], lambda f: "the vocabularies differ at 2 of 7 ids (first: id 3 is 'a' in A, 'b' in B)",
                False),
}
ROWS = [(k, a, b) for k, (bs, _, _) in CASES.items() for b in bs for a in ALL
        if k != "letters" or FORMATS[a].vocab]


@pytest.mark.parametrize("kind,a,b", ROWS, ids=[f"{k}-{a}-vs-{b}" for k, a, b in ROWS])
def test_each_diagnosis_in_every_pair(port_session, files, kind, a, b):
    fmts, expect, no_run = CASES[kind]
    res = crosscheck(port_session, files[("good", a)], broken(port_session, files, kind, b))
    assert not res.agree
    assert any(expect(b) in f for f in res.findings), res.findings
    if no_run:  # B's own framework refuses the file: there is nothing to compare output by output
        assert "B" in res.failed and res.rows == []
    else:
        assert res.failed == {}
        if kind != "letters":
            assert any(r.status.startswith("FAIL") for r in res.rows)
    if kind == "forget":
        assert "is A's +1:" in next(f for f in res.findings if f.startswith("B's layer 2 forget"))
    if kind not in ("vocab",):  # one mistake, one finding (a vocabulary of another size also moves the decoder)
        assert len(res.findings) == 1, res.findings


@pytest.mark.parametrize("a", ["torch", "onnx"])
@pytest.mark.parametrize("b", ALL)
def test_a_missing_bias_half(port_session, files, a, b):
    """A holds its bias as two non-zero halves (a trained torch model); B took only the first."""
    res = crosscheck(port_session, files[("split", a)], broken(port_session, files, "missing", b, a))
    half = {"torch": ("lstm.bias_ih_l0", "lstm.bias_hh_l0"),
            "onnx": ("the input half of lstm.0.B", "the recurrent half of lstm.0.B")}[a]
    assert not res.agree
    assert len(res.findings) == 1 and f"is A's {half[0]} alone: A's {half[1]} is missing from it" in res.findings[0], \
        res.findings


@pytest.mark.parametrize("a", ALL)
@pytest.mark.parametrize("b", ALL)
def test_good_files_agree_in_every_pair(port_session, files, a, b):
    res = crosscheck(port_session, files[("good", a)], files[("good", b)])
    assert res.agree and res.findings == [] and res.failed == {}
    assert len(res.rows) == 6 and all(r.status == "ok" for r in res.rows)


@pytest.mark.parametrize("a", [f for f in ALL if f != "chainer"])
@pytest.mark.parametrize("b", ALL)
def test_one_hot_against_embedding(port_session, files, a, b):
    res = crosscheck(port_session, files[("onehot", a)], files[("good", b)])
    assert not res.agree
    assert res.findings[0].startswith("input: A takes one-hot input"), res.findings
    assert "B's embed @ W_x is not A's W_x" in res.findings[0]


@pytest.mark.parametrize("a", ["torch", "keras", "onnx"])
@pytest.mark.parametrize("b", ["canonical", "flax"])
def test_an_identity_embedding_is_the_same_function_as_one_hot(port_session, files, tmp_path, a, b):
    """B embeds with the identity (E = V) and A's one-hot W_x: structurally different, the same
    function; crosscheck agrees."""
    Q = init_params(ONEHOT, seed=13)
    m = ModelConfig(7, 4, 3, "embedding", 7)
    path = tmp_path / f"eye-{b}{SUFFIX[b]}"
    port_session.write(ported("canonical", "eye", m, {**Q, "embed": np.eye(7)}, vocab=VOCAB), b, path)
    res = crosscheck(port_session, files[("onehot", a)], path)
    assert res.agree and res.findings == []


def test_the_json_report(port_session, files, tmp_path):
    """The same diagnosis through the command line (the NumPy-only canonical files, so that no
    framework need start): exit 1, the table, --json; and exit 0 for two that agree."""
    from tests.test_porting import lstmbench
    a, b = files[("good", "canonical")], broken(port_session, files, "gates", "canonical")
    r = lstmbench("crosscheck", str(a), str(b), "--json", str(tmp_path / "cc.json"), cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "DISAGREE" in r.stdout and "logits   from a zero state" in r.stdout
    doc = json.loads((tmp_path / "cc.json").read_text())
    assert doc["agree"] is False and doc["b"]["format"] == "canonical"
    assert doc["findings"] == ["B's layer 1 gates are in i,f,o,g order where canonical means i,f,g,o "
                               "(param/lstm.1.W_x, param/lstm.1.W_h, param/lstm.1.b)"]
    r = lstmbench("crosscheck", str(a), str(a), "--json", "-", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["agree"] is True and "AGREE" in r.stderr
    assert {o["output"] for o in doc["outputs"]} == {"logits", "h", "c", "logits@state", "h@state", "c@state"}

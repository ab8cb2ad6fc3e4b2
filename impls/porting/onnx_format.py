"""The `onnx` format: an ONNX graph that ONNX Runtime runs, one LSTM operator per layer.

Written (opset 18): inputs `tokens` int64 (B, T) and, optional, `h0`, `c0` float32 (L, B, H)
(ONNX optional-typed inputs: leave them out for a zero state, which an If node makes; a zero
initializer standing in for them would have had ONNX Runtime warn on every session); outputs
`logits` (B, T, V) first, then `h`, `c`. Inside: Gather(embed)
or OneHot, a Transpose to time-major, per layer an LSTM operator (W (1, 4H, D), R (1, 4H, H),
B (1, 8H): gates i, o, f, c, the row layouts.ONNX, recurrent half of B zero), a Transpose back,
MatMul + Add. The vocabulary, where known, is the model's metadata `lstmbench` (JSON).

Read: lstmbench's graphs and what torch.onnx.export(..., dynamo=False) writes for a module
with nn.Embedding (or one-hot), nn.LSTM (any num_layers, batch_first either way) and nn.Linear:
the weights are initializers (or Constant nodes) found by the operator that uses them; a GRU
or RNN operator, a bidirectional or peephole LSTM, or an operator that is not part of the
model (a Softmax after the decoder, a convolution) is another model. Protobuf is data: no code
runs; weights in external files are refused.

`run` is onnxruntime.InferenceSession on the file: tokens fed in the layout its graph takes
(traced from the input to the first LSTM), the state where the graph takes one."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import layouts
from ..config import ModelConfig
from . import PortError
from .assemble import Faults, Layer, assemble, check_template, lstm_layer, oriented
from .model import Outputs, Ported, Probe

OPSET = 18  # LSTM-14, OneHot-11, Squeeze/Slice-13, optional inputs (OptionalHasElement-18)
META = "lstmbench"
# what a graph of docs/SPEC.md's model may hold besides LSTM, Gather/OneHot and the decoder
PLUMBING = {"Cast", "Transpose", "Shape", "Slice", "Squeeze", "Unsqueeze", "Concat", "Constant", "Expand",
            "Identity", "Reshape", "ConstantOfShape", "Gather", "OneHot", "LSTM", "MatMul", "Add", "Gemm",
            "Split", "Range", "Equal", "Where", "Mul", "Sub", "Div", "Size", "NonZero", "Tile",
            "If", "OptionalHasElement", "OptionalGetElement"}
INSTALL = "pip install 'lstmbench[onnxruntime]'"


def can_hold(model: ModelConfig) -> str | None:
    return None


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise PortError(f"the onnx format needs onnx and onnxruntime: {INSTALL}") from None
    return onnx


def load(path: str | Path) -> Any:
    onnx = _onnx()
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise PortError(f"{path}: not a readable ONNX model ({type(e).__name__}); it is truncated or corrupt") from None
    if not proto.graph.node:
        raise PortError(f"{path}: an ONNX file with an empty graph; it is truncated or not a model")
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise PortError(f"{path}: initializer {t.name} lives in an external file; save the model "
                            "with its weights inside (onnx.save(..., save_as_external_data=False))")
    return proto


def _consts(proto: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper
    out = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def structure(proto: Any, path: str) -> dict[str, Any]:
    """The graph's parts: LSTM nodes in order, the embedding Gather or OneHot, the decoder's
    weight and bias names (and whether the weight is Gemm's transposed one)."""
    consts = _consts(proto)
    nodes = list(proto.graph.node)
    ops = {n.op_type for n in nodes}
    for bad, what in (("GRU", "a GRU"), ("RNN", "a plain RNN")):
        if bad in ops:
            raise PortError(f"{path}: the graph runs {what} operator: lstmbench ports the LSTM of docs/SPEC.md only")
    other = sorted(ops - PLUMBING)
    if other:
        raise PortError(f"{path}: the graph has {', '.join(other)} node(s): another model than docs/SPEC.md's "
                        "(embedding or one-hot -> LSTM operators -> MatMul/Gemm + Add: logits, no softmax)")
    lstms = [n for n in nodes if n.op_type == "LSTM"]
    if not lstms:
        raise PortError(f"{path}: no LSTM operator in the graph; another model")
    for n in lstms:
        a = _attrs(n)
        direction = a.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        ins = list(n.input) + [""] * (8 - len(n.input))
        why = (f"direction {direction}" if direction != "forward" else
               "input_forget=1 (coupled gates)" if a.get("input_forget", 0) else
               "peepholes (input P)" if ins[7] else "sequence_lens" if ins[4] else
               "a cell clip" if "clip" in a else
               "other activations" if [x.decode() if isinstance(x, bytes) else x for x in a.get("activations", [])]
               not in ([], ["Sigmoid", "Tanh", "Tanh"]) else None)
        if why:
            raise PortError(f"{path}: LSTM node {n.name or n.output[0]} has {why}: docs/SPEC.md's LSTM is "
                            "forward, sigmoid/tanh, without peepholes, clip or coupled gates")
        for k in (1, 2) + ((3,) if ins[3] else ()):
            if ins[k] not in consts:
                raise PortError(f"{path}: LSTM node {n.name or n.output[0]} computes its weights in the graph "
                                f"({ins[k]}); lstmbench reads weights stored as initializers")
    embeds = [n for n in nodes if n.op_type == "Gather" and n.input[0] in consts and consts[n.input[0]].ndim == 2]
    onehot = [n for n in nodes if n.op_type == "OneHot"]
    dec_w = dec_b = None
    trans = False
    last = nodes.index(lstms[-1])
    for n in nodes[last:]:
        if n.op_type == "MatMul" and dec_w is None:
            w = [x for x in n.input if x in consts and consts[x].ndim == 2]
            if w:
                dec_w, mm_out = w[0], n.output[0]
        elif n.op_type == "Gemm" and dec_w is None and n.input[1] in consts:
            dec_w, trans = n.input[1], bool(_attrs(n).get("transB", 0))
            dec_b = n.input[2] if len(n.input) > 2 and n.input[2] in consts else None
        elif n.op_type == "Add" and dec_w is not None and dec_b is None:
            b = [x for x in n.input if x in consts and consts[x].ndim == 1]
            if b and any(x == mm_out for x in n.input):
                dec_b = b[0]
    if dec_w is None:
        raise PortError(f"{path}: no MatMul or Gemm with a weight after the last LSTM: no decoder to logits")
    if len(embeds) > 1:
        raise PortError(f"{path}: {len(embeds)} Gather nodes over weight tables; lstmbench's model has one embedding")
    return {"consts": consts, "lstms": lstms, "embed": embeds[0].input[0] if embeds else None,
            "onehot": bool(onehot), "dec_w": dec_w, "dec_b": dec_b, "trans": trans}


def read(path: str | Path, like: str | Path | None = None, lenient: bool = False) -> Ported:
    proto = load(path)
    s = structure(proto, str(path))
    consts, faults = s["consts"], Faults(str(path), lenient)
    layers: list[Layer] = []
    for n in s["lstms"]:
        ins = list(n.input) + [""] * 4
        layers.append(lstm_layer(layouts.ONNX, consts[ins[1]], consts[ins[2]], consts.get(ins[3]) if ins[3] else None,
                                 None, {"W_x": [ins[1]], "W_h": [ins[2]], "b": [ins[3]] if ins[3] else []}, faults))
    H = layers[-1].W_h.shape[0]
    W = np.asarray(consts[s["dec_w"]], np.float64)
    if s["trans"]:
        W = W.T
    b = np.asarray(consts[s["dec_b"]], np.float64) if s["dec_b"] else None
    V = b.shape[0] if b is not None else (W.shape[1] if W.shape[0] == H else W.shape[0])
    W = oriented(W, (H, V), s["dec_w"], faults, "the decoder's MatMul weight (H, V)")
    embed = np.asarray(consts[s["embed"]], np.float64) if s["embed"] else None
    meta = {p.key: p.value for p in proto.metadata_props}
    vocab = None
    try:
        v = json.loads(meta[META]).get("vocab") if META in meta else None
        vocab = "".join(v) if isinstance(v, list) else None
    except ValueError:
        pass
    return assemble("onnx", path, "onnx", layers, W, b,
                    {"out.W": [s["dec_w"]], "out.b": [s["dec_b"]] if s["dec_b"] else []}, faults,
                    embed=embed, embed_name=s["embed"], vocab=vocab,
                    describe=f"ONNX graph (producer {proto.producer_name or '?'}, opset "
                             f"{max((o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')), default='?')}): "
                             f"{'Gather ' + s['embed'] if embed is not None else 'OneHot'}, "
                             f"{len(layers)} LSTM operator(s), decoder {s['dec_w']}")


def _native(p: Ported) -> dict[str, np.ndarray]:
    m, H = p.model, p.model.hidden_size
    out = {"embed": p.params["embed"]} if m.input == "embedding" else {}
    for l in range(m.num_layers):
        out[f"lstm.{l}.W"] = layouts.weight_to_native(layouts.ONNX, p.params[f"lstm.{l}.W_x"], H)  # (1, 4H, D)
        out[f"lstm.{l}.R"] = layouts.weight_to_native(layouts.ONNX, p.params[f"lstm.{l}.W_h"], H)  # (1, 4H, H)
        out[f"lstm.{l}.B"] = layouts.bias_to_native(layouts.ONNX, p.params[f"lstm.{l}.b"])  # (1, 8H)
    out["out.W"], out["out.b"] = p.params["out.W"], p.params["out.b"]  # (H, V), (V,)
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def build(p: Ported) -> Any:
    """lstmbench's graph for the model (module docstring)."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper
    m = p.model
    V, H, L = m.vocab_size, m.hidden_size, m.num_layers
    n = helper.make_node
    consts = {**_native(p), "zero_state": np.zeros((L, 1, H), np.float32),
              "depth": np.array(V, np.int64), "onehot_values": np.array([0.0, 1.0], np.float32),
              "L": np.array([L], np.int64), "H": np.array([H], np.int64), "zero": np.array([0], np.int64),
              "one": np.array([1], np.int64), "squeeze_axis": np.array([1], np.int64)}
    consts.update({f"l{l}": np.array([l], np.int64) for l in range(L + 1)})
    f32 = TensorProto.FLOAT

    def given_or_zero(name: str) -> list[Any]:
        """`name`_b (L, B, H): the optional input where given, else zeros of the tokens' batch."""
        out = f"{name}_b"
        then = helper.make_graph([n("OptionalGetElement", [name], [f"{name}_given"])], f"{name}_given", [],
                                 [helper.make_tensor_value_info(f"{name}_given", f32, [L, "B", H])])
        other = helper.make_graph([n("Expand", ["zero_state", "state_shape"], [f"{name}_zero"])], f"{name}_zero", [],
                                  [helper.make_tensor_value_info(f"{name}_zero", f32, [L, "B", H])])
        return [n("OptionalHasElement", [name], [f"has_{name}"]),
                n("If", [f"has_{name}"], [out], then_branch=then, else_branch=other)]
    nodes = [n("Gather", ["embed", "tokens"], ["x_bt"]) if m.input == "embedding"
             else n("OneHot", ["tokens", "depth", "onehot_values"], ["x_bt"], axis=-1),  # (B, T, D0)
             n("Transpose", ["x_bt"], ["x0"], perm=[1, 0, 2]),  # (T, B, D0): the LSTM operator's layout
             n("Shape", ["tokens"], ["tok_shape"]), n("Slice", ["tok_shape", "zero", "one"], ["batch"]),
             n("Concat", ["L", "batch", "H"], ["state_shape"], axis=0), *given_or_zero("h0"), *given_or_zero("c0")]
    x = "x0"
    for l in range(L):
        nodes += [n("Slice", ["h0_b", f"l{l}", f"l{l + 1}", "zero"], [f"h0_{l}"]),  # (1, B, H)
                  n("Slice", ["c0_b", f"l{l}", f"l{l + 1}", "zero"], [f"c0_{l}"]),
                  n("LSTM", [x, f"lstm.{l}.W", f"lstm.{l}.R", f"lstm.{l}.B", "", f"h0_{l}", f"c0_{l}"],
                    [f"y{l}", f"h_last{l}", f"c_last{l}"], hidden_size=H, name=f"lstm_{l}"),  # y (T, 1, B, H)
                  n("Squeeze", [f"y{l}", "squeeze_axis"], [f"x{l + 1}"])]
        x = f"x{l + 1}"
    nodes += [n("Transpose", [x], ["top"], perm=[1, 0, 2]), n("MatMul", ["top", "out.W"], ["xw"]),
              n("Add", ["xw", "out.b"], ["logits"]),
              n("Concat", [f"h_last{l}" for l in range(L)], ["h"], axis=0),
              n("Concat", [f"c_last{l}" for l in range(L)], ["c"], axis=0)]
    used = {i for node in nodes for i in node.input} | {"zero_state"}
    inits = [numpy_helper.from_array(v, k) for k, v in consts.items() if k in used]
    optional = lambda name: helper.make_value_info(  # noqa: E731
        name, helper.make_optional_type_proto(helper.make_tensor_type_proto(f32, [L, "B", H])))
    graph = helper.make_graph(
        nodes, "lstmbench_char_lstm",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["B", "T"]), optional("h0"), optional("c0")],
        [helper.make_tensor_value_info("logits", f32, ["B", "T", V]),
         helper.make_tensor_value_info("h", f32, [L, "B", H]), helper.make_tensor_value_info("c", f32, [L, "B", H])],
        inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lstmbench")
    proto.ir_version = min(proto.ir_version, 8)  # readable by onnxruntime >= 1.14
    onnx.checker.check_model(proto)
    return proto


def _set(proto: Any, name: str, value: np.ndarray) -> None:
    """Replace the initializer (or Constant node) `name`, keeping its dtype and shape."""
    from onnx import helper, numpy_helper
    for i, t in enumerate(proto.graph.initializer):
        if t.name == name:
            old = numpy_helper.to_array(t)
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(value.astype(old.dtype).reshape(old.shape), name))
            return
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    old = numpy_helper.to_array(a.t)
                    a.t.CopyFrom(numpy_helper.from_array(value.astype(old.dtype).reshape(old.shape), a.t.name))
            return
    raise PortError(f"the template has no weight named {name}")


def write(p: Ported, path: str | Path, like: str | Path | None = None) -> str:
    onnx = _onnx()
    from onnx import helper
    if like is None:
        proto = build(p)
        what = "ONNX graph: tokens (B, T), optional h0, c0 (L, B, H) -> logits (B, T, V), h, c"
    else:
        t = check_template(read(like), p.model, like)
        proto = load(like)
        consts = _consts(proto)
        native = _native(p)
        H = p.model.hidden_size
        for l in range(p.model.num_layers):
            _set(proto, t.names[f"lstm.{l}.W_x"][0], native[f"lstm.{l}.W"])
            _set(proto, t.names[f"lstm.{l}.W_h"][0], native[f"lstm.{l}.R"])
            if t.names[f"lstm.{l}.b"]:
                _set(proto, t.names[f"lstm.{l}.b"][0], native[f"lstm.{l}.B"])
            elif np.any(p.params[f"lstm.{l}.b"]):
                raise PortError(f"--like {like}: its LSTM {l} has no bias input but the model's is not zero")
        w = t.names["out.W"][0]
        _set(proto, w, native["out.W"] if consts[w].shape == (H, p.model.vocab_size) else native["out.W"].T)
        if t.names["out.b"]:
            _set(proto, t.names["out.b"][0], native["out.b"])
        if p.model.input == "embedding":
            _set(proto, t.names["embed"][0], native["embed"])
        del proto.metadata_props[:]
        what = f"the --like graph ({like}) with the model's weights"
    if p.vocab:
        helper.set_model_props(proto, {META: json.dumps({"vocab": list(p.vocab), "converted_from": p.format})})
    onnx.save(proto, str(path))
    return what


def _tokens_batch_major(proto: Any) -> bool:
    """Whether the graph takes tokens (B, T): count the Transposes between the input and the
    first LSTM's X, against that operator's layout attribute."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    first = next(n for n in proto.graph.node if n.op_type == "LSTM")
    flips, name = 0, first.input[0]
    while name in producer:
        node = producer[name]
        if node.op_type == "Transpose" and list(_attrs(node).get("perm", []))[:2] == [1, 0]:
            flips += 1
        name = node.input[1] if node.op_type == "Gather" else node.input[0]
    time_major_x = _attrs(first).get("layout", 0) == 0
    return (flips % 2 == 1) == time_major_x


def run(path: str | Path, probe: Probe, like: str | Path | None = None) -> Outputs:
    try:
        import onnxruntime as ort
    except ImportError:
        raise PortError(f"running an ONNX file needs onnxruntime: {INSTALL}") from None
    proto = load(path)
    s = structure(proto, str(path))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT's own exception types
        raise PortError(f"{path}: onnxruntime refuses it: {' '.join(str(e).split())[:200]}") from None
    ins = list(sess.get_inputs())
    tok = [i for i in ins if "int" in i.type]
    floats = [i for i in ins if "float" in i.type]
    by_name = {x.name: x for x in floats}
    states = [by_name["h0"], by_name["c0"]] if {"h0", "c0"} <= set(by_name) else \
        [x for x in floats if x.type.startswith("tensor") and len(x.shape or ()) == 3]
    if len(tok) != 1:
        raise PortError(f"{path}: {len(tok)} integer inputs; lstmbench feeds one (the tokens)")
    batch_major = _tokens_batch_major(proto)
    B, T = probe.tokens.shape
    tokens = probe.tokens if batch_major else probe.tokens.T
    tokens = tokens.astype(np.int32 if "int32" in tok[0].type else np.int64)

    def call(h0: np.ndarray | None, c0: np.ndarray | None) -> list[np.ndarray]:
        feed = {tok[0].name: tokens}
        if h0 is not None:
            feed[states[0].name], feed[states[1].name] = h0.astype(np.float32), c0.astype(np.float32)
        res = sess.run(None, feed)
        logits = np.asarray(res[0], np.float64)
        if logits.shape[:2] == (T, B) and (T, B) != (B, T):
            logits = logits.transpose(1, 0, 2)
        rest = [np.asarray(r, np.float64) for r in res[1:3] if np.ndim(r) == 3 and np.shape(r)[1] == B]
        return [logits, *rest]
    if len(states) not in (0, 2):
        states = []
    required = {x.name for x in states if not x.type.startswith("optional")}
    H = int(_attrs(s["lstms"][0])["hidden_size"])
    z = np.zeros((len(s["lstms"]), B, H)) if required else None  # a graph whose state is not optional
    out = dict(zip(("logits", "h", "c"), call(z, z)))
    if probe.h0 is not None and len(states) == 2:
        out.update(zip(("logits@state", "h@state", "c@state"), call(probe.h0, probe.c0)))
    return out

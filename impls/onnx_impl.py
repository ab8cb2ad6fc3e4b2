"""The ONNX Runtime backend (`onnxruntime`): the model as an ONNX graph, run by ONNX Runtime,
the way an LSTM language model is usually deployed. Evaluation and generation only: ONNX
Runtime's inference sessions compute no gradients, so the registry entry says
modes=("eval", "generate") and train_step / loss_and_grads raise NotImplementedError.

The graph is built here with `onnx.helper` from the canonical parameters (no exporter in
between), time-major, every size but V, E, H, L dynamic:

    tokens (T, B) int64 -> Gather(embed)            (T, B, E)   embedding input
                        -> OneHot(V)                 (T, B, V)   one-hot input
    per layer l: LSTM(X, W (1, 4H, D), R (1, 4H, H), B (1, 8H), initial_h/c (1, B, H))
                 -> Y (T, 1, B, H) -> Squeeze -> the next layer's X
    MatMul(out.W (H, V)) + out.b                     logits (T, B, V)
    SoftmaxCrossEntropyLoss(mean)                    loss ()   (the eval graph only)

The ONNX LSTM operator's gate order is i, o, f, c and its bias is the input and recurrent
halves end to end: the row layouts.ONNX converts (explicit table, shape checks); the
recurrent half is held at 0. Weights are graph initializers, so `load` builds new sessions
and `params` reads the initializers back through the same table.

Generation is one graph too (build_generate_graph): the prefix through the layers, then an
ONNX `Loop` whose body draws each token with docs/SPEC.md §5's rule written in float64 ONNX
ops and feeds it back, so a sequence is one session run. Measured at char-rnn's sizes, one
thread (docs/speed.md): 38 us a character, against 59 for the forward graph run per token with
the draw on the host (I/O binding took 8 us off each of those runs: not enough).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from . import layouts
from .config import ModelConfig, TrainConfig
from .params import Params, check_params, param_shapes
from .sampling import prefix_ids

OPSET = 17  # LSTM-14, SoftmaxCrossEntropyLoss-13, OneHot-11, Squeeze/Slice-13: all in ORT >= 1.12
_THREADS: int | None = None  # intra-op threads for every session made after configure()

State = tuple[np.ndarray, np.ndarray]  # (h, c), each (L, B, H) float32 on the host


def configure(threads: int | None, device: str) -> dict[str, str]:
    """Remember the intra-op thread count for the sessions (ONNX Runtime sets threads per
    session, not per process) and report the version and execution provider."""
    global _THREADS
    if device != "cpu":
        raise ValueError(f"the onnxruntime backend runs on the CPU only, got device {device!r}")
    _THREADS = threads
    return {"version": ort.__version__, "onnx": onnx.__version__,
            "kernel": "ORT CPUExecutionProvider (MLAS)",
            "intra_op_threads": str(threads) if threads else "default"}


def kernel_info(backend_name: str, device: str) -> dict[str, str]:
    """The ONNX LSTM operator runs ORT's CPU kernel (MLAS GEMMs) in this backend."""
    return {"kernel": "ORT CPUExecutionProvider (MLAS)"}


# ---- the graph ------------------------------------------------------------------------

def _native(model: ModelConfig, params: Params) -> dict[str, np.ndarray]:
    """Canonical float64 -> the graph's float32 initializers, by initializer name."""
    H = model.hidden_size
    out: dict[str, np.ndarray] = {}
    if model.input == "embedding":
        out["embed"] = np.asarray(params["embed"])  # (V, E)
    for l in range(model.num_layers):
        out[f"W{l}"] = layouts.weight_to_native(layouts.ONNX, params[f"lstm.{l}.W_x"], H)  # (1, 4H, D)
        out[f"R{l}"] = layouts.weight_to_native(layouts.ONNX, params[f"lstm.{l}.W_h"], H)  # (1, 4H, H)
        out[f"B{l}"] = layouts.bias_to_native(layouts.ONNX, params[f"lstm.{l}.b"])  # (1, 8H)
    out["out_W"] = np.asarray(params["out.W"])  # (H, V)
    out["out_b"] = np.asarray(params["out.b"])  # (V,)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def _canonical(model: ModelConfig, native: dict[str, np.ndarray]) -> Params:
    H = model.hidden_size
    out: Params = {}
    if model.input == "embedding":
        out["embed"] = native["embed"]
    for l in range(model.num_layers):
        D = model.layer_input_size(l)
        out[f"lstm.{l}.W_x"] = layouts.weight_to_canonical(layouts.ONNX, native[f"W{l}"], D, H)
        out[f"lstm.{l}.W_h"] = layouts.weight_to_canonical(layouts.ONNX, native[f"R{l}"], H, H)
        out[f"lstm.{l}.b"] = layouts.bias_to_canonical(layouts.ONNX, native[f"B{l}"], H)
    out["out.W"] = native["out_W"]
    out["out.b"] = native["out_b"]
    return {k: np.array(v, np.float64) for k, v in out.items()}


def build_graph(model: ModelConfig, native: dict[str, np.ndarray], with_loss: bool) -> onnx.ModelProto:
    """The forward graph (inputs tokens, h0, c0; outputs logits, h, c), plus `targets` in and
    `loss` out when with_loss."""
    m = model
    V, H, L = m.vocab_size, m.hidden_size, m.num_layers
    n = helper.make_node
    nodes: list[onnx.NodeProto] = []
    inits = [numpy_helper.from_array(v, k) for k, v in native.items()]
    consts = {"axis0": np.array([0], np.int64), "axis1": np.array([1], np.int64),
              "onehot_values": np.array([0.0, 1.0], np.float32),
              "depth": np.array(V, np.int64), "flat": np.array([-1], np.int64),
              "flat_v": np.array([-1, V], np.int64)}
    consts.update({f"l{l}": np.array([l], np.int64) for l in range(L + 1)})
    inits += [numpy_helper.from_array(v, k) for k, v in consts.items()]

    if m.input == "embedding":
        nodes.append(n("Gather", ["embed", "tokens"], ["x0"]))  # (T, B, E)
    else:
        nodes.append(n("OneHot", ["tokens", "depth", "onehot_values"], ["x0"], axis=-1))  # (T, B, V)
    x = "x0"
    for l in range(L):
        # this layer's (1, B, H) slice of the (L, B, H) state
        nodes.append(n("Slice", ["h0", f"l{l}", f"l{l + 1}", "axis0"], [f"h0_{l}"]))
        nodes.append(n("Slice", ["c0", f"l{l}", f"l{l + 1}", "axis0"], [f"c0_{l}"]))
        nodes.append(n("LSTM", [x, f"W{l}", f"R{l}", f"B{l}", "", f"h0_{l}", f"c0_{l}"],
                       [f"y{l}", f"yh{l}", f"yc{l}"], hidden_size=H))  # y (T, 1, B, H)
        nodes.append(n("Squeeze", [f"y{l}", "axis1"], [f"x{l + 1}"]))  # (T, B, H)
        x = f"x{l + 1}"
    nodes.append(n("MatMul", [x, "out_W"], ["xw"]))  # (T, B, V)
    nodes.append(n("Add", ["xw", "out_b"], ["logits"]))
    if L > 1:
        nodes.append(n("Concat", [f"yh{l}" for l in range(L)], ["h"], axis=0))  # (L, B, H)
        nodes.append(n("Concat", [f"yc{l}" for l in range(L)], ["c"], axis=0))
    else:
        nodes.append(n("Identity", ["yh0"], ["h"]))  # the LSTM's Y_h (1, B, H) is the whole state
        nodes.append(n("Identity", ["yc0"], ["c"]))
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info("tokens", i64, ["T", "B"]),
              helper.make_tensor_value_info("h0", f32, [L, "B", H]),
              helper.make_tensor_value_info("c0", f32, [L, "B", H])]
    outputs = [helper.make_tensor_value_info("logits", f32, ["T", "B", V]),
               helper.make_tensor_value_info("h", f32, [L, "B", H]),
               helper.make_tensor_value_info("c", f32, [L, "B", H])]
    if with_loss:
        inputs.append(helper.make_tensor_value_info("targets", i64, ["T", "B"]))
        nodes.append(n("Reshape", ["logits", "flat_v"], ["logits2"]))  # (T*B, V)
        nodes.append(n("Reshape", ["targets", "flat"], ["targets1"]))  # (T*B,)
        nodes.append(n("SoftmaxCrossEntropyLoss", ["logits2", "targets1"], ["loss"],
                       reduction="mean"))
        outputs = [helper.make_tensor_value_info("loss", f32, []), outputs[1], outputs[2]]
    used = {name for node in nodes for name in node.input}
    inits = [t for t in inits if t.name in used]  # constants only some graphs need
    graph = helper.make_graph(nodes, "lstmbench_char_lstm", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="lstmbench")
    onnx.checker.check_model(proto)
    return proto


def _layers(nodes: list[onnx.NodeProto], x: str, L: int, H: int, h0: str, c0: str,
            tag: str) -> tuple[str, list[str], list[str]]:
    """Append the L LSTM layers from input `x` (T, B, D) and states `h0`, `c0` (L, B, H) or ""
    (zeros); returns the top layer's output name (T, B, H) and each layer's Y_h, Y_c names."""
    n = helper.make_node
    hs, cs = [], []
    for l in range(L):
        hl = cl = ""
        if h0:
            hl, cl = f"{tag}h0_{l}", f"{tag}c0_{l}"
            nodes.append(n("Slice", [h0, f"l{l}", f"l{l + 1}", "axis0"], [hl]))  # (1, B, H)
            nodes.append(n("Slice", [c0, f"l{l}", f"l{l + 1}", "axis0"], [cl]))
        nodes.append(n("LSTM", [x, f"W{l}", f"R{l}", f"B{l}", "", hl, cl],
                       [f"{tag}y{l}", f"{tag}yh{l}", f"{tag}yc{l}"], hidden_size=H))  # (T, 1, B, H)
        nodes.append(n("Squeeze", [f"{tag}y{l}", "axis1"], [f"{tag}x{l + 1}"]))  # (T, B, H)
        x = f"{tag}x{l + 1}"
        hs.append(f"{tag}yh{l}")
        cs.append(f"{tag}yc{l}")
    return x, hs, cs


def build_generate_graph(model: ModelConfig, native: dict[str, np.ndarray], filtered: bool
                         ) -> onnx.ModelProto:
    """The whole generation as one graph: inputs prefix (P, 1) int64, uniforms (n,) double,
    temperature () double (0: greedy), top_k () int64 (read by the `filtered` graph only, for
    0 < top_k < V); output tokens (n,) int64. The prefix runs through the LSTM layers in one
    pass; then a Loop of n iterations, each drawing a token from the last logits with
    docs/SPEC.md §5's rule in float64 ONNX ops (Softmax, CumSum, a count of cdf <= u, the last
    non-zero id for rounding, ArgMax for greedy, TopK's k-th value and ties kept for top-k) and
    feeding it through the layers (the same LSTM operator, one step). One session run per
    sequence instead of one per token, and no host draw."""
    m = model
    V, H, L = m.vocab_size, m.hidden_size, m.num_layers
    n = helper.make_node
    f32, f64, i64, b = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.BOOL
    consts = {"axis0": np.array([0], np.int64), "axis1": np.array([1], np.int64),
              "axis_m1": np.array([-1], np.int64), "onehot_values": np.array([0.0, 1.0], np.float32),
              "depth": np.array(V, np.int64), "last_t": np.array([-1], np.int64),
              "end_t": np.array([2 ** 62], np.int64), "zero64": np.array(0.0), "one64": np.array(1.0),
              "ninf64": np.array(-np.inf), "ids": np.arange(V, dtype=np.int64),
              "minus1": np.array(-1, np.int64), "one_i": np.array([1], np.int64),
              "true": np.array(True)}
    consts.update({f"l{l}": np.array([l], np.int64) for l in range(L + 1)})

    def inputs_of(tok: str, out: str, nodes: list[onnx.NodeProto]) -> None:
        """(T, 1) int64 ids -> the first layer's input (T, 1, D)."""
        if m.input == "embedding":
            nodes.append(n("Gather", ["embed", tok], [out]))
        else:
            nodes.append(n("OneHot", [tok, "depth", "onehot_values"], [out], axis=-1))

    # the prefix, in one pass from zero states
    nodes: list[onnx.NodeProto] = []
    inputs_of("prefix", "px0", nodes)
    x, hs, cs = _layers(nodes, "px0", L, H, "", "", "p")
    nodes += [n("Slice", [x, "last_t", "end_t", "axis0"], ["p_last"]),  # (1, 1, H)
              n("MatMul", ["p_last", "out_W"], ["p_xw"]), n("Add", ["p_xw", "out_b"], ["p_lg"]),
              n("Squeeze", ["p_lg", "axis0"], ["logits0"]),  # (1, V)
              n("Concat", hs, ["h_start"], axis=0) if L > 1 else n("Identity", hs, ["h_start"]),
              n("Concat", cs, ["c_start"], axis=0) if L > 1 else n("Identity", cs, ["c_start"]),
              n("Shape", ["uniforms"], ["n_shape"]), n("Squeeze", ["n_shape", "axis0"], ["n_trip"])]

    # the loop body: draw from the carried logits, then one step of the network
    body: list[onnx.NodeProto] = [
        n("Gather", ["uniforms", "i"], ["u"]),  # () double
        n("Greater", ["temperature", "zero64"], ["sampled"]),
        n("Where", ["sampled", "temperature", "one64"], ["t_div"]),
        n("Cast", ["logits_in"], ["z64"], to=f64), n("Div", ["z64", "t_div"], ["z"])]  # (1, V)
    z = "z"
    if filtered:  # keep every logit >= the k-th largest (ties kept)
        body += [n("Reshape", ["top_k", "one_i"], ["k1"]),
                 n("TopK", ["z", "k1"], ["topv", "topi"], axis=-1),
                 n("ReduceMin", ["topv"], ["kth"], axes=[-1], keepdims=1),
                 n("GreaterOrEqual", ["z", "kth"], ["keep"]),
                 n("Where", ["keep", "z", "ninf64"], ["zk"])]
        z = "zk"
    body += [n("Softmax", [z], ["p"], axis=-1),
             n("CumSum", ["p", "axis_m1"], ["cdf"]),
             n("LessOrEqual", ["cdf", "u"], ["below"]), n("Cast", ["below"], ["below_i"], to=i64),
             n("ReduceSum", ["below_i", "axis_m1"], ["first"], keepdims=1),  # (1, 1): the first id with u < cdf
             n("Greater", ["p", "zero64"], ["nonzero"]), n("Where", ["nonzero", "ids", "minus1"], ["nz_ids"]),
             n("ReduceMax", ["nz_ids"], ["last"], axes=[-1], keepdims=1),  # rounding: u >= cdf[-1]
             n("Min", ["first", "last"], ["drawn"]),
             n("ArgMax", ["logits_in"], ["greedy"], axis=-1, keepdims=1),  # first maximum
             n("Where", ["sampled", "drawn", "greedy"], ["tok"]),  # (1, 1) int64
             n("Squeeze", ["tok", "axis0"], ["tok_out"]),  # (1,)
             n("Identity", ["cond_in"], ["cond_out"])]
    inputs_of("tok", "bx0", body)
    x, hs, cs = _layers(body, "bx0", L, H, "h_in", "c_in", "b")
    body += [n("MatMul", [x, "out_W"], ["b_xw"]), n("Add", ["b_xw", "out_b"], ["b_lg"]),
             n("Squeeze", ["b_lg", "axis0"], ["logits_out"]),
             n("Concat", hs, ["h_out"], axis=0) if L > 1 else n("Identity", hs, ["h_out"]),
             n("Concat", cs, ["c_out"], axis=0) if L > 1 else n("Identity", cs, ["c_out"])]
    vi = helper.make_tensor_value_info
    state = [vi("logits_in", f32, [1, V]), vi("h_in", f32, [L, 1, H]), vi("c_in", f32, [L, 1, H])]
    graph_body = helper.make_graph(
        body, "draw_and_step", [vi("i", i64, []), vi("cond_in", b, []), *state],
        [vi("cond_out", b, []), vi("logits_out", f32, [1, V]), vi("h_out", f32, [L, 1, H]),
         vi("c_out", f32, [L, 1, H]), vi("tok_out", i64, [1])])
    nodes += [n("Loop", ["n_trip", "true", "logits0", "h_start", "c_start"],
                ["logits_end", "h_end", "c_end", "toks"], body=graph_body),  # toks (n, 1)
              n("Squeeze", ["toks", "axis1"], ["tokens"])]
    inits = [numpy_helper.from_array(v, k) for k, v in {**native, **consts}.items()]
    used = {name for node in nodes for name in node.input} | {name for node in body for name in node.input}
    inits = [t for t in inits if t.name in used]
    graph = helper.make_graph(nodes, "lstmbench_char_lstm_generate",
                              [vi("prefix", i64, ["P", 1]), vi("uniforms", f64, ["n"]),
                               vi("temperature", f64, []), vi("top_k", i64, [])],
                              [vi("tokens", i64, ["n"])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="lstmbench")
    onnx.checker.check_model(proto)
    return proto


# ---- the backend ---------------------------------------------------------------------

class OnnxBackend:
    """The char-LSTM as ONNX graphs in ONNX Runtime inference sessions (eval and generate)."""

    def __init__(self, model: ModelConfig, train: TrainConfig, params: Params, *,
                 device: str = "cpu", dtype: str = "float32", seed: int = 0,
                 precision: str = "float32") -> None:
        if device != "cpu":
            raise ValueError(f"the onnxruntime backend runs on the CPU only, got device {device!r}")
        if dtype != "float32":
            raise ValueError(f"the onnxruntime backend computes in float32, got dtype {dtype!r}")
        if precision != "float32":
            raise ValueError(f"the onnxruntime backend has only precision float32, got {precision!r}")
        self.model, self.train = model, train
        self.dtype = np.dtype(np.float32)
        self._last: Any = None
        self.load(params)

    def _session(self, proto: onnx.ModelProto) -> ort.InferenceSession:
        so = ort.SessionOptions()
        if _THREADS:
            so.intra_op_num_threads = _THREADS
        so.inter_op_num_threads = 1  # one graph, run sequentially: no inter-op parallelism
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # errors only
        return ort.InferenceSession(proto.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])

    # ---- parameters and data -----------------------------------------------------------
    def load(self, params: Params) -> None:
        check_params(self.model, params)
        native = _native(self.model, params)
        self._fwd_proto = build_graph(self.model, native, with_loss=False)
        self._fwd = self._session(self._fwd_proto)
        self._eval = self._session(build_graph(self.model, native, with_loss=True))
        self._native = native
        self._gen: dict[bool, ort.InferenceSession] = {}  # top-k filter? -> generation session

    def params(self) -> Params:
        native = {t.name: numpy_helper.to_array(t) for t in self._fwd_proto.graph.initializer}
        out = _canonical(self.model, native)
        assert {k: v.shape for k, v in out.items()} == param_shapes(self.model)
        return out

    def put(self, tokens: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(tokens, dtype=np.int64).T)  # (T, B) time-major

    def state(self, h: np.ndarray, c: np.ndarray) -> State:
        return (np.ascontiguousarray(h, dtype=np.float32), np.ascontiguousarray(c, dtype=np.float32))

    def fetch_state(self, state: State) -> tuple[np.ndarray, np.ndarray]:
        return np.array(state[0], np.float64), np.array(state[1], np.float64)

    def sync(self) -> None:
        pass  # InferenceSession.run returns when its outputs are on the host

    def value(self, x: Any) -> float:
        return float(x)

    # ---- compute -------------------------------------------------------------------------
    def forward(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        logits, h, c = self._fwd.run(None, {"tokens": tokens, "h0": state[0], "c0": state[1]})
        return np.asarray(logits, np.float64).transpose(1, 0, 2), (h, c)  # (B, T, V)

    def eval_step(self, tokens: np.ndarray, targets: np.ndarray, state: State
                  ) -> tuple[np.ndarray, State]:
        loss, h, c = self._eval.run(None, {"tokens": tokens, "targets": targets,
                                           "h0": state[0], "c0": state[1]})
        return loss, (h, c)

    def loss_and_grads(self, tokens: Any, targets: Any, state: Any) -> Any:
        raise NotImplementedError("the onnxruntime backend has no train mode (ONNX Runtime "
                                  "inference sessions compute no gradients); it runs eval and generate")

    def train_step(self, tokens: Any, targets: Any, state: Any) -> Any:
        raise NotImplementedError("the onnxruntime backend has no train mode (ONNX Runtime "
                                  "inference sessions compute no gradients); it runs eval and generate")

    def generate(self, prefix: np.ndarray, n: int, temperature: float, top_k: int,
                 uniforms: np.ndarray) -> np.ndarray:
        prefix = prefix_ids(prefix).reshape(-1, 1)  # (P, 1)
        if n == 0:
            return np.empty(0, np.int64)
        filtered = 0 < int(top_k) < self.model.vocab_size
        if filtered not in self._gen:
            self._gen[filtered] = self._session(build_generate_graph(self.model, self._native, filtered))
        tokens, = self._gen[filtered].run(None, {
            "prefix": prefix, "uniforms": np.ascontiguousarray(np.asarray(uniforms, np.float64)[:n]),
            "temperature": np.array(float(temperature)), "top_k": np.array(int(top_k), np.int64)})
        return np.asarray(tokens, np.int64)

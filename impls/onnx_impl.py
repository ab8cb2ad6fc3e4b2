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

Generation runs the forward graph on one token with the state as input and output (the
prefix in one call), and draws each next token on the host with impls.sampling.draw (docs/SPEC.md §5):
an ONNX graph cannot take the caller's sampling rule without reimplementing it in ONNX ops.
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
from .sampling import draw

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
        m = self.model
        prefix = np.asarray(prefix, np.int64).reshape(-1, 1)  # (P, 1)
        if prefix.size == 0:
            raise ValueError("generate needs a prefix of at least one token")
        zero = np.zeros((m.num_layers, 1, m.hidden_size), np.float32)
        run = self._fwd.run
        logits, h, c = run(None, {"tokens": prefix, "h0": zero, "c0": zero})  # (P, 1, V)
        out = np.empty(n, np.int64)
        tok = np.empty((1, 1), np.int64)
        for k in range(n):
            out[k] = draw(logits[-1, 0], temperature, top_k, float(uniforms[k]))
            if k + 1 < n:
                tok[0, 0] = out[k]
                logits, h, c = run(None, {"tokens": tok, "h0": h, "c0": c})  # (1, 1, V)
        return out

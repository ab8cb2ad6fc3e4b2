"""TensorFlow-backend specifics that tests/test_conformance.py does not cover: the gate blocks
landing in the real Keras LSTM variables (layouts.KERAS), the GPU error, and the kernel label
of each variant (tensorflow vs tensorflow-xla)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("keras")

from impls.config import ClipConfig, ModelConfig, OptimizerConfig, TrainConfig  # noqa: E402
from impls.layouts import GATES  # noqa: E402
from impls.params import init_params  # noqa: E402

ti = pytest.importorskip("impls.tensorflow_impl")

# sizes chosen so that no two dimensions coincide
EMBED = ModelConfig(vocab_size=11, hidden_size=5, num_layers=2, input="embedding", embed_size=4)
ADAM = TrainConfig(OptimizerConfig("adam", lr=0.01), ClipConfig("norm", 1.0))


def _backend(model: ModelConfig = EMBED, train: TrainConfig = ADAM, seed: int = 0):
    return ti.TensorflowBackend(model, train, init_params(model, seed))


def test_gate_blocks_land_in_keras_order():
    """Canonical [i f g o] blocks must appear in Keras' kernel as [i f c o] (c = g)."""
    H = EMBED.hidden_size
    p = init_params(EMBED, 0)
    for k, name in enumerate(GATES):
        p["lstm.0.W_x"][:, k * H:(k + 1) * H] = k + 1  # block value = 1 + canonical position
        p["lstm.0.b"][k * H:(k + 1) * H] = 10 * (k + 1)
    be = _backend()
    be.load(p)
    kernel = be._net.lstms[0].cell.kernel.numpy()
    bias = be._net.lstms[0].cell.bias.numpy()
    for j, gate in enumerate(("i", "f", "g", "o")):  # Keras column order
        expect = GATES.index(gate) + 1
        assert np.all(kernel[:, j * H:(j + 1) * H] == expect), gate
        assert np.all(bias[j * H:(j + 1) * H] == 10 * expect), gate


def test_gpu_without_gpu_is_a_clear_error():
    import tensorflow as tf
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="GPU"):
        ti.TensorflowBackend(EMBED, ADAM, init_params(EMBED, 0), device="gpu")


def test_kernel_info_follows_the_variant():
    assert ti.kernel_info("tensorflow-xla", "cpu") == {"kernel": "XLA:CPU"}
    assert ti.kernel_info("tensorflow", "cpu")["kernel"] in ("oneDNN", "Eigen")
    assert ti.device_peak_memory("cpu", True) is None and ti.device_matmul_peak("cpu") is None

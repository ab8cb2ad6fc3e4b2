"""PyTorch-backend specifics that tests/test_conformance.py does not cover: the gate blocks
landing in the real nn.LSTM / char-rnn parameters (layouts.TORCH, layouts.CHAR_RNN), the second
bias held at 0 through training, nn.LSTM's internal dropout with one layer, the dropout
presets of docs/SPEC.md §6 at a small window, the precision/device arguments, and the
kernel label of each variant."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from impls.config import ClipConfig, ModelConfig, OptimizerConfig, TrainConfig, get_preset  # noqa: E402
from impls.layouts import GATES  # noqa: E402
from impls.params import init_params  # noqa: E402
from tests.conftest import random_window

ti = pytest.importorskip("impls.torch_impl")

BACKENDS = {"torch": ti.TorchBackend, "torch-cell": ti.TorchCellBackend}
# sizes chosen so that no two dimensions coincide
EMBED = ModelConfig(vocab_size=11, hidden_size=5, num_layers=2, input="embedding", embed_size=4)
ONEHOT = ModelConfig(vocab_size=9, hidden_size=6, num_layers=3)
ADAM = TrainConfig(OptimizerConfig("adam", lr=0.01), ClipConfig("norm", 1.0))


@pytest.mark.parametrize("name,native_order", [("torch", ("i", "f", "g", "o")),
                                               ("torch-cell", ("i", "f", "o", "g"))])
def test_gate_blocks_land_in_native_order(name, native_order):
    """Canonical [i f g o] blocks must appear as nn.LSTM's [i f g o] row blocks and as
    char-rnn's [i f o g] i2h/h2h output blocks (docs/SPEC.md §3)."""
    H = EMBED.hidden_size
    p = init_params(EMBED, 0)
    for k, _ in enumerate(GATES):
        p["lstm.1.W_x"][:, k * H:(k + 1) * H] = k + 1  # block value = 1 + canonical position
        p["lstm.1.W_h"][:, k * H:(k + 1) * H] = -(k + 1)
        p["lstm.1.b"][k * H:(k + 1) * H] = 10 * (k + 1)
    be = BACKENDS[name](EMBED, ADAM, p)
    wx, wh, b = (be.net.get_parameter(s.native).detach().numpy() for s in be.slots
                 if s.canonical.startswith("lstm.1."))
    assert wx.shape == (4 * H, H) and wh.shape == (4 * H, H)
    for j, gate in enumerate(native_order):
        expect = GATES.index(gate) + 1
        assert np.all(wx[j * H:(j + 1) * H] == expect), gate
        assert np.all(wh[j * H:(j + 1) * H] == -expect), gate
        assert np.all(b[j * H:(j + 1) * H] == 10 * expect), gate


@pytest.mark.parametrize("name", BACKENDS)
def test_second_bias_stays_zero_and_untrained(name):
    be = BACKENDS[name](EMBED, ADAM, init_params(EMBED, 0))
    zero = [s.zero_partner for s in be.slots if s.zero_partner]
    assert len(zero) == EMBED.num_layers
    in_opt = {id(p) for g in be.opt.param_groups for p in g["params"]}
    for n in zero:
        p = be.net.get_parameter(n)
        assert not p.requires_grad and id(p) not in in_opt, n
    before = be.params()
    tok, tgt, h, c = random_window(EMBED)
    t, g = be.put(tok), be.put(tgt)
    st = be.state(h, c)
    for _ in range(3):
        loss, st = be.train_step(t, g, st)
    for n in zero:
        assert torch.count_nonzero(be.net.get_parameter(n)).item() == 0, n
    after = be.params()
    assert not np.array_equal(after["lstm.0.b"], before["lstm.0.b"])  # the one bias trains


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("model", [dataclasses.replace(ONEHOT, num_layers=1)], ids=["onehot1"])
def test_dropout_with_one_layer(name, model):
    """nn.LSTM's own dropout does nothing for L = 1 (and warns): the explicit input and output
    dropout must still apply. (Two and more layers: tests/test_conformance.py.)"""
    model = dataclasses.replace(model, dropout=0.5)
    be = BACKENDS[name](model, ADAM, init_params(model, 0), seed=1)
    tok, tgt, h, c = random_window(model)
    t, g = be.put(tok), be.put(tgt)
    l1, _ = be.forward(t, be.state(h, c))
    l2, _ = be.forward(t, be.state(h, c))
    np.testing.assert_array_equal(l1, l2)  # eval: no dropout
    e1, _ = be.eval_step(t, g, be.state(h, c))
    e2, _ = be.eval_step(t, g, be.state(h, c))
    assert be.value(e1) == be.value(e2)
    # train mode draws masks: two passes differ from each other and from eval
    a, _, _, _ = be.loss_and_grads(t, g, be.state(h, c))
    b, _, _, _ = be.loss_and_grads(t, g, be.state(h, c))
    assert a != b and a != be.value(e1)
    before = be.params()
    loss, st = be.train_step(t, g, be.state(h, c))
    assert np.isfinite(be.value(loss))
    assert any(not np.array_equal(v, before[k]) for k, v in be.params().items())
    # after training, eval is still deterministic
    l3, _ = be.forward(t, be.state(h, c))
    l4, _ = be.forward(t, be.state(h, c))
    np.testing.assert_array_equal(l3, l4)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("preset", ["tutorial", "chainer-ptb"])
def test_dropout_presets_take_a_step(name, preset):
    P = get_preset(preset)
    m = P.model
    be = BACKENDS[name](m, P.train, init_params(m, 0))
    tok, tgt, h, c = random_window(m, B=2, T=5)
    before = be.params()
    loss, (hn, cn) = be.train_step(be.put(tok), be.put(tgt), be.state(h, c))
    assert np.isfinite(be.value(loss))
    assert tuple(hn.shape) == (m.num_layers, 2, m.hidden_size)
    assert all(not np.array_equal(v, before[k]) for k, v in be.params().items() if k != "embed")


def test_precision_and_device_arguments():
    p = init_params(EMBED, 0)
    with pytest.raises(ValueError, match="precision"):
        ti.TorchBackend(EMBED, ADAM, p, precision="bf16")
    with pytest.raises(ValueError, match="GPU"):
        ti.TorchBackend(EMBED, ADAM, p, precision="tf32")  # CPU
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU visible to torch"):
            ti.TorchBackend(EMBED, ADAM, p, device="gpu")
        with pytest.raises(ValueError, match="no CUDA GPU"):
            ti.configure(None, "gpu")


def test_configure_reports_kernel():
    info = ti.configure(None, "cpu")
    assert info["version"] == torch.__version__
    assert info["kernel"] in ("oneDNN", "ATen native")
    assert int(info["threads"]) >= 1


def test_kernel_info_names_each_variants_own_path():
    """torch-cell never runs the fused oneDNN/cuDNN LSTM: its label must say so."""
    fused = ti.kernel_info("torch", "cpu")["kernel"]
    cell = ti.kernel_info("torch-cell", "cpu")["kernel"]
    assert fused in ("oneDNN", "ATen native")
    assert cell.startswith("per-step addmm") and "oneDNN" not in cell
    assert ti.device_peak_memory("cpu", False) is None and ti.device_matmul_peak("cpu") is None

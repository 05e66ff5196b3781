"""The INT8 model keeps its classifier head (Gemm/MatMul, bias, Sigmoid) in float.

A quantized sigmoid output can only take 256 values (multiples of 1/255): thresholds and
rankings then jump in coarse steps. The convolutions must still be INT8.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from tests.support.synth_windows import make_windows, small_cnn  # noqa: E402
from trainer.export import export_onnx, onnx_predict  # noqa: E402
from trainer.quantize import QuantSettings, head_nodes, quantize_model  # noqa: E402


def _on_one_grid(p: np.ndarray) -> bool:
    """True when all scores are multiples of one step (what a quantized output produces)."""
    u = np.unique(p.astype(np.float64))
    step = np.diff(u).min()
    k = (u - u[0]) / step
    return bool(np.all(np.abs(k - np.round(k)) < 1e-3))


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("head")
    xc, _, _ = make_windows(24, seed=1)
    fp32 = export_onnx(small_cnn(3).eval(), d / "fp32.onnx")
    out = quantize_model(fp32, d / "int8.onnx", xc, QuantSettings(calibration_windows=24))
    return fp32, out


def test_head_is_float_and_scores_are_fine_grained(int8):
    fp32, out = int8
    graph = onnx.load(out).graph
    head = head_nodes(graph)
    assert [n.op_type for n in head][0] == "Sigmoid" and head[-1].op_type in ("Gemm", "MatMul")
    producer = {o: n for n in graph.node for o in n.output}
    # The output comes straight from the float Sigmoid, not from a DequantizeLinear.
    assert producer[graph.output[0].name].op_type == "Sigmoid"
    # The head's weights are plain float initialisers, not dequantized INT8.
    fc = head[-1]
    assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in fc.input[1:])
    # ... while the convolutions are quantized.
    conv_inputs = [i for n in graph.node if n.op_type == "Conv" for i in n.input]
    assert any(i in producer and producer[i].op_type == "DequantizeLinear" for i in conv_inputs)

    xv, _, _ = make_windows(16, seed=2)
    p8, p32 = onnx_predict(out, xv), onnx_predict(fp32, xv)
    assert not _on_one_grid(p8)  # a quantized output (e.g. multiples of 1/255) would be
    assert _on_one_grid(np.round(p8 * 255) / 255)  # the check itself can fail
    assert len(np.unique(p8)) > 0.8 * p8.size
    assert np.abs(p8 - p32).max() < 0.1


def test_head_nodes_walks_sigmoid_add_matmul():
    from onnx import helper

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "B"], ["l"], name="add"),
             helper.make_node("Sigmoid", ["l"], ["y"], name="sig")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 4])],
                          [helper.make_tensor_value_info("y", 1, [1, 2])])
    assert [n.name for n in head_nodes(g)] == ["sig", "add", "mm"]

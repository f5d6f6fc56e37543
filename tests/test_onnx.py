import csv
import io
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import onnx
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from captcha_generator import CaptchaStyle
from checkpoints import config_from_checkpoint
from data_loader import preprocess_image
from export_onnx import parity_images
from onnx_model import load_onnx
from predict import one_torch_thread, predict_captcha
from utils import load_model

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tiny_parquet, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    result = run("export_onnx.py", "--checkpoint", str(tiny_checkpoint), "--output", str(out), "--check", "32", cwd=out.parent)
    assert f"parity on 32 images of {tiny_parquet}: 0 predictions differ" in result.stdout
    return out


def test_parity_falls_back_to_generated_captchas_without_the_training_data(tiny_checkpoint, tiny_parquet, tmp_path):
    config = config_from_checkpoint(torch.load(tiny_checkpoint, weights_only=True))
    pngs, source = parity_images(config, 5)
    assert source == str(tiny_parquet) and len(pngs) == 5
    pngs, source = parity_images(replace(config, data=[str(tmp_path / "elsewhere")]), 5)
    assert source.startswith("generated captchas") and len(set(pngs)) == 5
    assert all(Image.open(io.BytesIO(png)).size == (CaptchaStyle().width, CaptchaStyle().height) for png in pngs)


def test_onnx_file_alone_rebuilds_the_configuration(exported, tiny_checkpoint):
    _, codec, config, info = load_onnx(exported)
    _, _, torch_config, ckpt = load_model(tiny_checkpoint)
    assert config == torch_config and codec.charset == torch_config.model.charset
    assert info["checkpoint"] == str(tiny_checkpoint) and info["best_metric"] == ckpt["best_metric"]
    meta = {p.key: p.value for p in onnx.load(exported).metadata_props}
    assert meta["charset"] == config.model.charset and int(meta["max_len"]) == config.model.max_len
    shape = (int(meta["img_height"]), int(meta["img_width"]), int(meta["channels"]))
    assert shape == (config.model.img_height, config.model.img_width, config.model.channels)


def test_spatial_means_are_exported_as_pooling(exported):
    """The SE blocks' and the columns' means run as pooling (onnxruntime's blocked layout)."""
    ops = [node.op_type for node in onnx.load(exported).graph.node]
    assert "ReduceMean" not in ops
    assert ops.count("GlobalAveragePool") >= 1 and ops.count("AveragePool") == 1


def test_onnxruntime_predictions_equal_pytorch_on_every_image(exported, tiny_checkpoint, tiny_parquet):
    onnx_model, plain, config, _ = load_onnx(exported)
    model, _, _, _ = load_model(tiny_checkpoint)
    images = torch.stack([preprocess_image(r["image"]["bytes"], config) for r in pq.read_table(tiny_parquet).to_pylist()])
    constrained = plain.constrained("1a", "3")
    for batch, codec in ((images[:1], plain), (images[1:8], plain), (images, plain), (images, constrained)):  # dynamic batch axis
        ours, theirs = predict_captcha(model, codec, batch), predict_captcha(onnx_model, codec, batch)
        assert [p.text for p in ours] == [p.text for p in theirs]
        assert all(abs(a.confidence - b.confidence) < 1e-4 for a, b in zip(ours, theirs))
        assert all(abs(x - y) < 1e-4 for a, b in zip(ours, theirs) for x, y in zip(a.char_confidences, b.char_confidences))
    assert all(len(p.text) == 3 and set(p.text) <= set("1a") for p in theirs)  # the last batch: constrained


def test_test_py_from_onnx_writes_the_same_csv_as_from_the_checkpoint(exported, tiny_checkpoint, tiny_parquet, tmp_path):
    common = ["--parquet", str(tiny_parquet), "--rows", "40", "--grid", "", "--quiet"]
    run("test.py", "--checkpoint", str(tiny_checkpoint), *common, "--csv", "torch.csv", cwd=tmp_path)
    out = run("test.py", "--onnx", str(exported), *common, "--csv", "onnx.csv", cwd=tmp_path)
    assert f"model: {exported}" in out.stdout
    rows = [list(csv.DictReader(open(tmp_path / name))) for name in ("torch.csv", "onnx.csv")]
    assert len(rows[0]) == 40 and [r["prediction"] for r in rows[0]] == [r["prediction"] for r in rows[1]]
    assert all(abs(float(a["confidence"]) - float(b["confidence"])) < 1e-4 for a, b in zip(*rows))


def test_an_onnx_file_without_our_metadata_is_refused(exported, tmp_path):
    bare = onnx.load(exported)
    del bare.metadata_props[:]
    onnx.save(bare, tmp_path / "bare.onnx")
    with pytest.raises(ValueError, match="no 'config' metadata"):
        load_onnx(tmp_path / "bare.onnx")


def test_onnxruntime_threads_do_not_spin_between_calls(exported):
    session = load_onnx(exported)[0].session  # spinning fought the preprocessing for the 2 cores (bench/RESULTS.md)
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_preprocessing_runs_on_one_torch_thread_and_restores_the_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError), one_torch_thread():
            assert torch.get_num_threads() == 1  # torch's idle threads would spin into onnxruntime's call
            raise RuntimeError("a failing batch")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

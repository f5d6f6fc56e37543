import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from data_loader import evaluation_loader, preprocess_image
from labels import parse_label
from predict import TTA_SHIFTS, predict_captcha, predict_images, shift_right
from utils import load_model

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_dataset_and_preprocess_image_give_the_same_tensor(tiny_checkpoint, tiny_parquet):
    _, codec, config, _ = load_model(tiny_checkpoint)
    config = dataclasses.replace(config, workers=0)
    loader, _ = evaluation_loader(config, codec, ("train", "val", "test"))
    image_bytes = pq.read_table(tiny_parquet)["image"][0].as_py()["bytes"]
    assert torch.equal(loader.dataset[0][0], preprocess_image(image_bytes, config))


def test_loader_batches_equal_the_items_one_by_one(tiny_checkpoint):
    _, codec, config, _ = load_model(tiny_checkpoint)
    config = dataclasses.replace(config, workers=0, batch_size=16)
    loader, _ = evaluation_loader(config, codec, ("train", "val", "test"))
    images, targets, bad = next(iter(loader))
    items = [loader.dataset[i] for i in range(16)]
    assert bad == 0 and images.shape == (16, config.model.channels, config.model.img_height, config.model.img_width)
    assert torch.equal(images, torch.stack([image for image, _ in items]))
    assert torch.equal(targets, torch.stack([target for _, target in items]))


def test_accuracy_calculator_json_and_confusion_png(tiny_checkpoint, tiny_parquet, tmp_path):
    out = run(
        "accuracy_calculator.py", "--checkpoint", str(tiny_checkpoint), "--data", str(tiny_parquet), "--workers", "0",
        "--json", "r.json", "--confusion-png", "c.png", cwd=tmp_path,
    )  # fmt: skip
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["case_sensitive"]["n"] == 120
    assert report["case_insensitive"]["seq_acc"] >= report["case_sensitive"]["seq_acc"]
    assert report["coverage"][0] == {"threshold": 0.0, "coverage": 1.0, "seq_acc": report["case_sensitive"]["seq_acc"]}
    assert set(report["by_length"]) <= {"2", "3"} and report["images_per_s"] > 0
    assert "case-sensitive" in out.stdout and "character error rate" in out.stdout
    assert (report["confusion_png"] is None) or (tmp_path / "c.png").exists()


def test_test_py_matches_the_accuracy_script_and_predict_captcha(tiny_checkpoint, tiny_parquet, tmp_path):
    out = run(
        "test.py", "--checkpoint", str(tiny_checkpoint), "--parquet", str(tiny_parquet), "--rows", "120", "--csv", "p.csv", cwd=tmp_path
    )
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 120 and (tmp_path / "predictions_grid.png").exists()
    Image.open(tmp_path / "predictions_grid.png").verify()
    model, codec, config, _ = load_model(tiny_checkpoint)
    table = pq.read_table(tiny_parquet).to_pylist()
    direct = predict_captcha(model, codec, torch.stack([preprocess_image(r["image"]["bytes"], config) for r in table]))
    assert [r["prediction"] for r in rows] == [p.text for p in direct]
    assert all(abs(float(r["confidence"]) - p.confidence) < 1e-4 for r, p in zip(rows, direct))
    correct = sum(p.text == parse_label(r["text"]) for p, r in zip(direct, table))
    assert f"correct: {correct}/120" in out.stdout
    run(
        "accuracy_calculator.py",
        "--checkpoint",
        str(tiny_checkpoint),
        "--data",
        str(tiny_parquet),
        "--workers",
        "0",
        "--json",
        "r.json",
        cwd=tmp_path,
    )
    report = json.loads((tmp_path / "r.json").read_text())
    assert round(report["case_sensitive"]["seq_acc"] * 120) == correct


def test_shift_right_moves_the_columns_and_fills_white():
    images = torch.arange(2 * 1 * 2 * 5, dtype=torch.float32).reshape(2, 1, 2, 5)
    assert shift_right(images, 0) is images
    right, left = shift_right(images, 2), shift_right(images, -2)
    assert right.shape == left.shape == images.shape
    assert torch.equal(right[..., 2:], images[..., :3]) and (right[..., :2] == 1.0).all()
    assert torch.equal(left[..., :3], images[..., 2:]) and (left[..., 3:] == 1.0).all()


def test_tta_answers_from_the_logits_averaged_over_shifted_copies(tiny_checkpoint, tiny_parquet, tmp_path):
    model, codec, config, _ = load_model(tiny_checkpoint)
    table = pq.read_table(tiny_parquet).to_pylist()
    images = torch.stack([preprocess_image(r["image"]["bytes"], config) for r in table])
    with torch.no_grad():
        logits = torch.stack([model(shift_right(images, dx)) for dx in TTA_SHIFTS]).mean(0)
    probs = (logits / model.temperature).softmax(-1)
    choice = probs.clone()
    choice[:, : codec.min_len, 0] = -1.0  # the answer never ends before the shortest training label
    ids = choice.argmax(-1)
    conf = probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    tta = predict_captcha(model, codec, images, shifts=TTA_SHIFTS)
    assert [p.text for p in tta] == [codec.decode(row) for row in ids.tolist()]
    assert all(abs(p.confidence - c) < 1e-5 for p, c in zip(tta, conf.prod(-1).tolist()))
    assert [p.confidence for p in tta] != [p.confidence for p in predict_captcha(model, codec, images)]
    run("accuracy_calculator.py", "--checkpoint", str(tiny_checkpoint), "--data", str(tiny_parquet), "--workers", "0", "--tta",
        "--json", "r.json", cwd=tmp_path)  # fmt: skip
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["tta_shifts"] == list(TTA_SHIFTS)
    assert round(report["case_sensitive"]["seq_acc"] * 120) == sum(p.text == parse_label(r["text"]) for p, r in zip(tta, table))
    run("test.py", "--checkpoint", str(tiny_checkpoint), "--parquet", str(tiny_parquet), "--rows", "120", "--tta", "--quiet",
        "--grid", "", "--csv", "t.csv", cwd=tmp_path)  # fmt: skip
    assert [r["prediction"] for r in csv.DictReader(open(tmp_path / "t.csv"))] == [p.text for p in tta]


def test_test_py_reports_bad_files_and_goes_on(tiny_checkpoint, tiny_parquet, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (150, 50), "white").save(folder / "blank.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (150, 50), "gray").save(folder / "gray.png")
    args = ("--checkpoint", str(tiny_checkpoint), "--csv", "p.csv", "--grid", "", "--batch-size", "2")
    out = run("test.py", str(folder), *args, cwd=tmp_path)  # batches of 2: a bad file on each side of a boundary
    assert "broken.png: skipped" in out.stdout and "empty.jpg: skipped" in out.stdout
    assert "predicted 2 images, skipped 2 unreadable" in out.stdout
    assert [r["file"] for r in csv.DictReader(open(tmp_path / "p.csv"))] == [str(folder / "blank.png"), str(folder / "gray.png")]


def test_scripts_without_a_trained_model_read_with_the_shipped_base(tiny_parquet, tmp_path):
    out = run("test.py", "--parquet", str(tiny_parquet), "--rows", "4", "--grid", "", cwd=tmp_path).stdout
    assert "reading with the shipped general base" in out and "model: " in out and "pretrained/general.pt" in out


def test_a_missing_checkpoint_is_named_without_a_traceback(tmp_path):
    for script, args in (("test.py", ["--parquet", "x.parquet"]), ("accuracy_calculator.py", [])):
        cmd = [sys.executable, str(ROOT / script), "--checkpoint", "missing.pt", *args]
        result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode != 0
        assert "missing.pt: no such checkpoint file" in result.stderr and "Traceback" not in result.stderr


def test_with_no_model_at_all_the_message_says_how_to_train(tmp_path, monkeypatch):
    import utils

    monkeypatch.setattr(utils, "SHIPPED", tmp_path / "absent.pt")
    with pytest.raises(FileNotFoundError, match="train one with `python main.py`"):
        utils.load_model(out_dir=str(tmp_path))


def test_predict_images_keeps_order_across_batches_and_marks_unreadable_items(tiny_checkpoint, tiny_parquet):
    model, codec, config, _ = load_model(tiny_checkpoint)
    blobs = [r["bytes"] for r in pq.read_table(tiny_parquet, columns=["image"]).column("image").to_pylist()[:9]]
    items = blobs[:4] + [b"not an image"] + blobs[4:]  # the bad item in the middle of the second batch of 3
    streamed = list(predict_images(model, codec, config, items, batch_size=3))
    at_once = predict_captcha(model, codec, torch.stack([preprocess_image(b, config) for b in blobs]))
    assert streamed[4] == (None, None)
    good = streamed[:4] + streamed[5:]
    assert [p.text for p, _ in good] == [p.text for p in at_once]
    assert [p.confidence for p, _ in good] == pytest.approx([p.confidence for p in at_once], abs=1e-5)
    assert all(torch.equal(t, preprocess_image(b, config)) for (_, t), b in zip(good, blobs))


class SaysEmpty(torch.nn.Module):
    """A model sure that every captcha is empty: at each position the end class at 0.92, "b" at 0.05."""

    temperature = 1.0

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, images):
        logits = torch.zeros(len(images), 5, 4)
        logits[:, :, 0] = 4.0  # end/pad
        logits[:, :, 2] = 1.0  # "b"
        return logits * self.scale


@pytest.mark.parametrize("min_len", [1, 3])
def test_an_answer_is_never_empty_nor_shorter_than_trained_and_its_confidence_says_so(min_len):
    from codec import LabelCodec

    (pred,) = predict_captcha(SaysEmpty(), LabelCodec("abc", 5, min_len), torch.zeros(1, 3, 8, 8))
    assert pred.text == "b" * min_len
    assert pred.confidence < 0.1**min_len and all(c < 0.1 for c in pred.char_confidences)


def test_main_sets_the_shortest_answer_from_the_training_labels(tiny_checkpoint):
    _, codec, config, _ = load_model(tiny_checkpoint)
    assert config.model.min_len == codec.min_len == 2  # tiny_parquet's labels are 2-3 characters long (--min-len 0: from the labels)

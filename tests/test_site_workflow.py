"""A user's own site: image folders as data, case-insensitive models, answers constrained to
the site's alphabet and lengths, the labelling loop, and progress that a log file can keep."""

import csv
import dataclasses
import io
import itertools
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import inputs
from codec import LabelCodec
from config import Config, ModelConfig
from data_loader import load_data, read_rows
from image_folders import find_datasets, read_label_file
from labels import label_from_name, parse_label
from make_dataset import parquet_to_parquet
from predict import Prediction, constrained_answers, predict_captcha
from progress import LogLines
from test import Example, write_review
from train import train_model

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def image_folder(tiny_parquet: Path, folder: Path, n: int = 40, name=lambda label, i: f"{label}_{i:04d}.png") -> dict[str, str]:
    """``n`` of tiny_parquet's captchas as PNG files named by ``name``; returns {file name: label}."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, row in enumerate(pq.read_table(tiny_parquet, columns=["image", "text"]).to_pylist()[:n]):
        label = parse_label(row["text"])
        file = name(label, i)
        (folder / file).write_bytes(row["image"]["bytes"])
        written[file] = label
    return written


def test_labels_come_from_the_file_name_or_a_pattern():
    assert label_from_name("aB3x.png") == "aB3x" and label_from_name("aB3x_0017.jpg") == "aB3x"
    assert label_from_name("0017-k9Zp.png", r"-(\w+)$") == "k9Zp" and label_from_name("nolabel.png", r"-(\w+)$") == ""


def test_an_image_folder_is_a_dataset_with_bad_files_counted_by_reason(tiny_parquet, tmp_path):
    folder = tmp_path / "site"
    written = image_folder(tiny_parquet, folder)
    (folder / "broken_0001.png").write_bytes(b"\x89PNG not really")
    (folder / "toolong123_0002.png").write_bytes((folder / next(iter(written))).read_bytes())
    (folder / "notes.txt").write_text("not an image")
    summary = parquet_to_parquet([str(folder)], tmp_path / "out.parquet", charset="abc123", max_len=4)
    assert summary["rows_in"] == 42 and summary["rows_out"] == 40
    assert summary["dropped"] == {"bad_image": 1, "too_long": 1}
    assert {r["image"] for r in summary["dropped_rows"]} == {"broken_0001.png", "toolong123_0002.png"}
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert sorted(r["label"] for r in out) == sorted(written.values())
    again = find_datasets([str(folder)])
    assert again == find_datasets([str(folder)]) and len(again) == 1  # built once, then reused
    (folder / "ab_9999.png").write_bytes((folder / next(iter(written))).read_bytes())
    assert find_datasets([str(folder)]) != again and len(list((folder / ".cache").glob("*.parquet"))) == 1


def test_a_read_only_folder_is_cached_in_the_users_cache(tiny_parquet, tmp_path, monkeypatch):
    folder = tmp_path / "mounted"
    written = image_folder(tiny_parquet, folder)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(inputs.os, "access", lambda path, mode: Path(path) != folder)  # the folder refuses writes
    config = Config.from_flat(dict(data=[str(folder)], charset="abc123", max_len=4))
    _, splits, _ = read_rows(config, LabelCodec(config.model.charset, config.model.max_len))
    assert sum(len(labels) for _, labels in splits.values()) == len(written)
    assert not (folder / ".cache").exists()
    assert list((tmp_path / "home" / ".cache" / "captcha-ocr").glob("*/images-*.parquet"))


def test_a_csv_of_labels_names_the_files_and_main_trains_on_the_folder(tiny_parquet, tmp_path):
    folder = tmp_path / "site"
    written = image_folder(tiny_parquet, folder, n=60, name=lambda label, i: f"img{i:03d}.jpg.png")
    with open(tmp_path / "labels.tsv", "w", newline="") as f:
        csv.writer(f, delimiter="\t").writerows([["filename", "label"], *written.items()])
    assert read_label_file(tmp_path / "labels.tsv") == written
    config = Config.from_flat(dict(data=[str(folder)], labels=str(tmp_path / "labels.tsv"), charset="abc123", max_len=4))
    _, splits, skipped = read_rows(config, LabelCodec("abc123", 4))
    assert sorted(sum((labels for _, labels in splits.values()), [])) == sorted(written.values()) and not skipped


def test_ignore_case_folds_the_charset_the_labels_and_the_exported_metadata(tiny_parquet, tmp_path):
    model = ModelConfig(charset="abcABC123", ignore_case=True)
    assert model.charset == "abc123" and model.num_classes == 7
    assert dataclasses.replace(model, charset="aBc").charset == "abc"
    codec = LabelCodec.for_model(model)
    assert codec.fold("AbC1") == "abc1" and codec.encode("AbC1").tolist() == codec.encode("abc1").tolist()
    folder = tmp_path / "upper"
    image_folder(tiny_parquet, folder, n=30, name=lambda label, i: f"{label.upper()}_{i}.png")
    flat = dict(data=[str(folder)], charset="abc123", ignore_case=True, max_len=4, img_height=32, img_width=96, width_mult=0.25)
    flat |= dict(depth_mult=0.25, head_dim=32, epochs=1, batch_size=8, max_steps=2, workers=0, out_dir=str(tmp_path / "m"), run_name="r")
    config = Config.from_flat(flat)
    loaders = load_data(config, LabelCodec.for_model(config.model))
    assert all(label == label.lower() for label in loaders["train"].dataset.labels) and not loaders["skipped"]
    best = train_model(config, loaders) / "best.pt"
    exported = tmp_path / "m.onnx"
    run("export_onnx.py", "--checkpoint", str(best), "--output", str(exported), "--check", "0", cwd=tmp_path)
    meta = {p.key: p.value for p in onnx.load(exported).metadata_props}
    assert meta["ignore_case"] == "true" and json.loads(meta["config"])["model"]["ignore_case"] is True
    assert meta["charset"] == "abc123"


def brute_force(probs: torch.Tensor, allowed: set[int], lengths: range) -> tuple[list[int], float]:
    """The likeliest full output (max_len,) ending like a label whose length is in ``lengths``
    and whose classes are allowed, and its probability given the allowed outputs."""
    max_len, k = probs.shape
    q = probs * torch.tensor([i == 0 or i in allowed for i in range(k)], dtype=probs.dtype)
    q = q / q.sum(-1, keepdim=True)
    scored = []
    for n in lengths:
        for chars in itertools.product(sorted(allowed), repeat=n):
            ids = [*chars] + [0] * (max_len - n)
            scored.append((float(torch.stack([q[i, c] for i, c in enumerate(ids)]).prod()), ids))
    best_p, best_ids = max(scored)
    return best_ids, best_p / sum(p for p, _ in scored)


def test_constrained_answers_are_the_likeliest_allowed_with_the_conditional_confidence():
    torch.manual_seed(0)
    codec = LabelCodec("abcd", 4, min_len=1)
    for allowed_chars, length in (("ab", "2-3"), ("abcd", "4"), ("c", ""), ("bd", "1")):
        answers = codec.constrained(allowed_chars, length).answers
        for _ in range(20):
            probs = (torch.randn(1, 4, 5) * 3).softmax(-1)
            ids, chosen, confidence = constrained_answers(probs, answers)
            allowed = {i + 1 for i, c in enumerate("abcd") if c in allowed_chars}
            expected, p = brute_force(probs[0], allowed, range(answers.shortest, answers.longest + 1))
            assert ids[0].tolist() == expected
            assert confidence.item() == pytest.approx(p, rel=1e-4)
            text = codec.decode(ids[0])
            assert set(text) <= set(allowed_chars) and answers.shortest <= len(text) <= answers.longest


def test_constraints_the_model_cannot_meet_are_refused():
    codec = LabelCodec("abc", 5)
    with pytest.raises(ValueError, match="cannot read 'z'"):
        codec.constrained("abz")
    for length in ("0", "6", "4-2", "x"):
        with pytest.raises(ValueError, match="--length"):
            codec.constrained("", length)
    assert LabelCodec("abc", 5, ignore_case=True).constrained("ABC").answers.allowed == (True, True, True, True)


def test_scripts_answer_within_the_allowed_characters_and_length(tiny_checkpoint, tiny_parquet, tmp_path):
    folder = tmp_path / "site"
    image_folder(tiny_parquet, folder, n=12)
    args = ("--checkpoint", str(tiny_checkpoint), "--grid", "", "--allowed-chars", "1a", "--length", "3")
    run("test.py", str(folder), *args, "--csv", "p.csv", cwd=tmp_path)
    answers = [r["prediction"] for r in csv.DictReader(open(tmp_path / "p.csv"))]
    assert len(answers) == 12 and all(len(a) == 3 and set(a) <= set("1a") for a in answers)
    report = tmp_path / "r.json"
    args = ("--checkpoint", str(tiny_checkpoint), "--data", str(folder), "--length", "2", "--json", str(report))
    run("accuracy_calculator.py", *args, cwd=tmp_path)
    assert set(json.loads(report.read_text())["by_length"]) <= {"2", "3"}  # by the labels' lengths; every answer has 2


def test_the_review_folder_holds_the_least_sure_with_guesses_that_train_back(tiny_parquet, tmp_path):
    folder = tmp_path / "pool"
    written = image_folder(tiny_parquet, folder, n=6)
    confidences = [0.9, 0.2, 0.5, 0.1, 0.95, 0.3]
    read = [(Example(f, folder / f), Prediction(label[::-1], conf, [])) for (f, label), conf in zip(written.items(), confidences)]
    png = io.BytesIO()
    Image.new("RGB", (60, 20), "white").save(png, format="JPEG")
    read.append((Example("data.parquet#7", png.getvalue()), Prediction("ab", 0.05, [])))
    out = write_review(read, 4, tmp_path / "to_label")
    rows = list(csv.DictReader(open(out)))
    assert [float(r["model_confidence"]) for r in rows] == [0.05, 0.1, 0.2, 0.3]
    assert rows[0]["file"].endswith(".jpeg") and rows[0]["label"] == "ab"
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([r["file"] for r in rows] + ["labels.csv"])
    assert read_label_file(out) == {r["file"]: r["label"] for r in rows}
    labelled = tmp_path / "labelled"
    image_folder(tiny_parquet, labelled, n=5)  # labels in the file names, beside the review folder's labels.csv
    summary = parquet_to_parquet([str(labelled), str(out.parent)], tmp_path / "both.parquet", charset="abc123", max_len=4)
    assert summary["rows_out"] == 9 and not summary["dropped"]


def test_test_py_review_flag_writes_the_folder(tiny_checkpoint, tiny_parquet, tmp_path):
    folder = tmp_path / "pool"
    image_folder(tiny_parquet, folder, n=10)
    out = run("test.py", str(folder), "--checkpoint", str(tiny_checkpoint), "--grid", "", "--quiet", "--review", "3", cwd=tmp_path)
    assert "the 3 least sure images" in out.stdout
    rows = list(csv.DictReader(open(tmp_path / "to_label" / "labels.csv")))
    assert len(rows) == 3 and all((tmp_path / "to_label" / r["file"]).is_file() for r in rows)


def test_progress_in_a_log_is_whole_lines_without_carriage_returns():
    log = io.StringIO()
    lines = LogLines(log)
    lines.write("\repoch 1/2:  50%|#####     | 1/2")
    lines.write("\r" + " " * 40 + "\r")  # a bar that clears itself
    lines.write("\repoch 1/2: 100%|##########| 2/2")
    assert log.getvalue() == "epoch 1/2:  50%|#####     | 1/2\nepoch 1/2: 100%|##########| 2/2\n"


def test_a_training_log_gets_no_carriage_returns(tiny_parquet, tmp_path):
    args = ["--data", str(tiny_parquet), "--charset", "abc123", "--max-len", "4", "--img-height", "32", "--img-width", "96"]
    args += ["--width-mult", "0.25", "--depth-mult", "0.25", "--head-dim", "32", "--epochs", "1", "--max-steps", "3", "--workers", "0"]
    result = run("main.py", *args, "--out-dir", str(tmp_path / "m"), "--time-limit", "0", cwd=tmp_path)
    assert "\r" not in result.stderr and "epoch 1/1" in result.stdout


def test_predict_captcha_uses_the_codec_constraints():
    class Uniform(torch.nn.Module):
        temperature = 1.0

        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, images):
            return torch.zeros(len(images), 5, 4) * self.scale

    (pred,) = predict_captcha(Uniform(), LabelCodec("abc", 5).constrained("c", "4"), torch.zeros(1, 3, 8, 8))
    assert pred.text == "cccc" and pred.confidence == pytest.approx(1.0)


def test_a_fine_tune_may_fold_the_case_of_a_case_sensitive_base():
    from config import finetune_config

    base = Config()
    folded = finetune_config(base, Config.from_flat({"ignore_case": True}), {"ignore_case"}).model
    assert folded.ignore_case and folded.charset == "0123456789abcdefghijklmnopqrstuvwxyz"
    assert not finetune_config(base, Config(), set()).model.ignore_case  # not given: the base's own

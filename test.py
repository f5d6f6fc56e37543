"""Show what a trained model reads on example images, and batch-predict a folder to CSV.

python test.py captcha1.png captcha2.jpg          # files
python test.py my_captchas/ --csv predictions.csv # a folder, batch prediction
python test.py --parquet data/generated.parquet --rows 16
python test.py my_captchas/ --onnx model.onnx --csv predictions.csv   # onnxruntime
"""

import argparse
import csv
import dataclasses
from pathlib import Path

import torch
from tqdm import tqdm

from data_loader import preprocess_image
from device import get_device
from inputs import open_parquet
from labels import parse_label
from predict import predict_captcha
from utils import load_recognizer
from visualize import show_all_images_with_predictions

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


@dataclasses.dataclass
class Example:
    name: str
    data: bytes
    truth: str | None = None


def collect_examples(paths: list[str], parquet: str | None, rows: int) -> list[Example]:
    """Image files, folders of images (sorted) and the first ``rows`` rows of a parquet file."""
    examples = []
    for p in paths:
        path = Path(p)
        files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
        examples += [Example(str(f), f.read_bytes()) for f in files]
    if parquet:
        table = open_parquet(parquet).iter_batches(batch_size=rows, columns=["image", "text"])
        batch = next(table).to_pylist()
        examples += [Example(f"{parquet}#{i}", (r["image"] or {}).get("bytes") or b"", parse_label(r["text"])) for i, r in enumerate(batch)]
    return examples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", help="image files or folders of images")
    p.add_argument("--parquet", default=None, help="also take the first --rows rows of this parquet file (labels shown)")
    p.add_argument("--rows", type=int, default=16, help="rows taken from --parquet")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: newest in saved_models/)")
    p.add_argument("--onnx", default=None, help="predict with this exported ONNX file (onnxruntime) instead of a checkpoint")
    p.add_argument("--batch-size", type=int, default=64, help="images per model call")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--csv", default=None, help="write file,prediction,confidence,char_confidences rows here")
    p.add_argument("--grid", default="predictions_grid.png", help="grid picture of the first --grid-size images ('' to skip)")
    p.add_argument("--grid-size", type=int, default=24, help="images in the grid picture")
    p.add_argument("--show", action="store_true", help="also open the grid in a window")
    p.add_argument("--quiet", action="store_true", help="do not print one line per image")
    a = p.parse_args()
    if not a.paths and not a.parquet:
        p.error("give image files, a folder, or --parquet")
    try:
        model, codec, config, ckpt = load_recognizer(a.checkpoint, a.onnx, get_device(a.device))
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    examples = collect_examples(a.paths, a.parquet, a.rows)
    good, tensors, failures = [], [], []
    for ex in examples:
        try:
            tensors.append(preprocess_image(ex.data, config))
            good.append(ex)
        except Exception as err:
            failures.append(ex.name)
            print(f"{ex.name}: skipped, not a readable image ({type(err).__name__})")
    predictions = []
    for start in tqdm(range(0, len(tensors), a.batch_size), desc="predicting", unit="batch", disable=len(tensors) <= a.batch_size):
        predictions += predict_captcha(model, codec, torch.stack(tensors[start : start + a.batch_size]))
    print(f"model: {ckpt['path']}")
    for ex, pred in zip(good, predictions):
        if not a.quiet:
            chars = " ".join(f"{c}:{q:.2f}" for c, q in zip(pred.text, pred.char_confidences))
            truth = "" if ex.truth is None else f"  truth {ex.truth} {'OK' if pred.text == ex.truth else 'WRONG'}"
            print(f"{ex.name}: {pred.text or '(empty)'}  confidence {pred.confidence:.3f}  [{chars}]{truth}")
    known = [(ex.truth, pred.text) for ex, pred in zip(good, predictions) if ex.truth is not None]
    if known:
        print(f"correct: {sum(t == q for t, q in known)}/{len(known)}")
    print(f"predicted {len(predictions)} images, skipped {len(failures)} unreadable")
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "prediction", "confidence", "char_confidences"])
            for ex, pred in zip(good, predictions):
                writer.writerow([ex.name, pred.text, f"{pred.confidence:.4f}", " ".join(f"{q:.4f}" for q in pred.char_confidences)])
        print(f"csv: {a.csv}")
    if a.grid and predictions:
        n = a.grid_size
        grid = show_all_images_with_predictions(
            torch.stack(tensors[:n]), predictions[:n], [ex.truth for ex in good[:n]], a.grid, show=a.show
        )
        print(f"grid: {grid}")


if __name__ == "__main__":
    main()

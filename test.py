"""Show what a trained model reads on example images, and batch-predict a folder to CSV.

python test.py captcha1.png captcha2.jpg          # files
python test.py my_captchas/ --csv predictions.csv # a folder, batch prediction
python test.py --parquet data/generated.parquet --rows 16
python test.py my_captchas/ --onnx model.onnx --csv predictions.csv   # onnxruntime
python test.py unlabelled/ --review 200 --review-dir to_label/      # the 200 least sure, to label
python test.py my_captchas/ --allowed-chars 0123456789 --length 4-6  # answers the site can show
"""

import argparse
import contextlib
import csv
import dataclasses
import io
from pathlib import Path

import torch
from PIL import Image

from config import HelpFormatter
from familiarity import batch_warning
from image_folders import FOLDER_LABELS
from inputs import image_files, open_parquet
from labels import parse_label
from predict import Prediction, add_tta_flag, predict_images
from utils import add_model_flags, recognizer_from_args
from visualize import show_all_images_with_predictions


@dataclasses.dataclass
class Example:
    name: str
    data: bytes | Path  # image files are read when their batch comes
    truth: str | None = None


def collect_examples(paths: list[str], parquet: str | None, rows: int) -> list[Example]:
    """Image files, folders of images (sorted) and the first ``rows`` rows of a parquet file."""
    examples = []
    for p in paths:
        path = Path(p)
        files = image_files(path) if path.is_dir() else [path]
        examples += [Example(str(f), f) for f in files]
    if parquet:
        table = open_parquet(parquet).iter_batches(batch_size=rows, columns=["image", "text"])
        batch = next(table).to_pylist()
        examples += [Example(f"{parquet}#{i}", (r["image"] or {}).get("bytes") or b"", parse_label(r["text"])) for i, r in enumerate(batch)]
    return examples


def write_review(read: list[tuple[Example, Prediction]], n: int, folder: Path) -> Path:
    """Copy the ``n`` images of ``read`` the model is least sure of (lowest confidence) into
    ``folder`` with labels.csv holding its guesses: correct them there, then train on the
    folder (main.py --data FOLDER reads its labels.csv). Returns the CSV's path."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (ex, pred) in enumerate(sorted(read, key=lambda r: r[1].confidence)[:n]):
        data = ex.data.read_bytes() if isinstance(ex.data, Path) else ex.data
        suffix = ex.data.suffix.lower() if isinstance(ex.data, Path) else "." + (Image.open(io.BytesIO(data)).format or "png").lower()
        source = ex.data.stem if isinstance(ex.data, Path) else Path(ex.name).name.replace(".", "_").replace("#", "_")  # data.parquet#7
        name = f"{i:05d}_{source}{suffix}"
        (folder / name).write_bytes(data)
        rows.append([name, pred.text, f"{pred.confidence:.4f}"])
    out = folder / FOLDER_LABELS
    with open(out, "w", newline="") as f:
        csv.writer(f).writerows([["file", "label", "model_confidence"], *rows])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("paths", nargs="*", help="image files or folders of images")
    p.add_argument("--parquet", default=None, help="also take the first --rows rows of this parquet file (labels shown)")
    p.add_argument("--rows", type=int, default=16, help="rows taken from --parquet")
    add_model_flags(p)
    p.add_argument("--batch-size", type=int, default=64, help="images per model call")
    p.add_argument("--csv", default=None, help="write file,prediction,confidence,char_confidences rows here")
    p.add_argument("--grid", default="predictions_grid.png", help="grid picture of the first --grid-size images ('' to skip)")
    p.add_argument("--grid-size", type=int, default=24, help="images in the grid picture")
    p.add_argument("--show", action="store_true", help="also open the grid in a window")
    p.add_argument("--quiet", action="store_true", help="do not print one line per image")
    p.add_argument("--review", type=int, default=0, help="copy the N images the model is least sure of into --review-dir, to label")
    p.add_argument("--review-dir", default="to_label", help="where --review puts the images and labels.csv (the model's guesses)")
    add_tta_flag(p)
    a = p.parse_args()
    if not a.paths and not a.parquet:
        p.error("give image files, a folder, or --parquet")
    model, codec, config, ckpt = recognizer_from_args(a)
    examples = collect_examples(a.paths, a.parquet, a.rows)
    print(f"model: {ckpt['path']}")
    shown, failures, read, known, correct = [], [], [], 0, 0
    with contextlib.ExitStack() as stack:
        writer = None
        if a.csv:
            writer = csv.writer(stack.enter_context(open(a.csv, "w", newline="")))
            writer.writerow(["file", "prediction", "confidence", "char_confidences"])
        predictions = predict_images(model, codec, config, [ex.data for ex in examples], a.batch_size, progress=True, shifts=a.shifts)
        for ex, (pred, tensor) in zip(examples, predictions):
            if pred is None:
                failures.append(ex.name)
                print(f"{ex.name}: skipped, not a readable image")
                continue
            read.append((ex, pred))
            truth = None if ex.truth is None else codec.fold(ex.truth)
            if truth is not None:
                known, correct = known + 1, correct + (pred.text == truth)
            if not a.quiet:
                chars = " ".join(f"{c}:{q:.2f}" for c, q in zip(pred.text, pred.char_confidences))
                said = "" if truth is None else f"  truth {truth} {'OK' if pred.text == truth else 'WRONG'}"
                odd = "  (looks unlike the training captchas)" if pred.unfamiliar else ""
                print(f"{ex.name}: {pred.text or '(empty)'}  confidence {pred.confidence:.3f}  [{chars}]{said}{odd}")
            if writer:
                writer.writerow([ex.name, pred.text, f"{pred.confidence:.4f}", " ".join(f"{q:.4f}" for q in pred.char_confidences)])
            if len(shown) < a.grid_size:
                shown.append((tensor, pred, truth))
    if known:
        print(f"correct: {correct}/{known}")
    warning = batch_warning([p.unfamiliar for _, p in read], [p.confidence for _, p in read], model.feature_stats)
    if warning:
        print(warning)
    print(f"predicted {len(read)} images, skipped {len(failures)} unreadable")
    if a.csv:
        print(f"csv: {a.csv}")
    if a.review:
        out = write_review(read, a.review, Path(a.review_dir))
        print(f"review: the {min(a.review, len(read))} least sure images and the model's guesses in {out}; correct the labels there,")
        print(f"        then train on them beside your other labels: python main.py --data <labelled> {a.review_dir} --init-from <model>")
    if a.grid and shown:
        tensors, predictions, truths = zip(*shown)
        grid = show_all_images_with_predictions(torch.stack(tensors), list(predictions), list(truths), a.grid, show=a.show)
        print(f"grid: {grid}")


if __name__ == "__main__":
    main()

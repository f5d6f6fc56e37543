"""Measure a trained recognizer: sequence accuracy and CER (case-sensitive and not),
accuracy by label length, character confusions, coverage at confidence thresholds, speed.

    python accuracy_calculator.py                          # newest checkpoint, its test split
    python accuracy_calculator.py --data other.parquet --json report.json
"""

import argparse
import dataclasses
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix  # noqa: E402

from config import HelpFormatter  # noqa: E402
from data_loader import evaluation_loader  # noqa: E402
from device import get_device  # noqa: E402
from familiarity import batch_warning  # noqa: E402
from labels import SPLITS  # noqa: E402
from metrics import full_report  # noqa: E402
from predict import add_tta_flag, run_inference  # noqa: E402
from utils import add_model_flags, recognizer_from_args  # noqa: E402


def save_confusion_png(predictions: list[str], labels: list[str], report: dict, output: Path, top: int = 12) -> Path | None:
    """Confusion matrix (scikit-learn) of the characters in the most frequent confusions,
    over aligned positions of same-length predictions where both characters are among them."""
    chars = sorted({c for row in report["top_confusions"][:top] for c in (row["true"], row["predicted"])})
    aligned = [(t, p) for pred, lab in zip(predictions, labels) if len(pred) == len(lab) for t, p in zip(lab, pred)]
    pairs = [(t, p) for t, p in aligned if t in chars and p in chars]
    if not chars or not pairs:
        return None
    truth, guess = zip(*pairs)
    matrix = confusion_matrix(truth, guess, labels=chars)
    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(chars), 1 + 0.5 * len(chars)))
    ConfusionMatrixDisplay(matrix, display_labels=chars).plot(ax=ax, colorbar=False, values_format="d")
    ax.set_title("most confused characters (rows: true)")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


def print_report(report: dict) -> None:
    cs, ci = report["case_sensitive"], report["case_insensitive"]
    print(f"\ncheckpoint   {report['checkpoint']}\ndata         {', '.join(report['data'])} ({report['splits']})")
    print(f"images       {cs['n']} evaluated, {report['bad_images']} undecodable, skipped labels {report['skipped_labels']}")
    print(f"\n{'':22}{'case-sensitive':>16}{'case-insensitive':>18}")
    print(f"{'sequence accuracy':22}{cs['seq_acc']:>16.2%}{ci['seq_acc']:>18.2%}")
    print(f"{'character error rate':22}{cs['cer']:>16.2%}{ci['cer']:>18.2%}")
    print("\nby length    " + "  ".join(f"{n}: {v['seq_acc']:.1%} (n={v['n']})" for n, v in report["by_length"].items()))
    print("confusions   " + ", ".join(f"{c['true']}->{c['predicted']} x{c['count']}" for c in report["top_confusions"][:10]))
    print("\nconfidence >=  coverage  accuracy")
    for row in report["coverage"]:
        acc = "-" if row["seq_acc"] is None else f"{row['seq_acc']:.2%}"
        print(f"{row['threshold']:>13.2f}  {row['coverage']:>8.1%}  {acc:>8}")
    cal = report["calibration"]
    print(f"calibration  mean confidence {cal['mean_confidence']:.2%}, accuracy {cs['seq_acc']:.2%}; error (ECE) {cal['ece']:.2%}")
    if report["unfamiliar_share"] is not None:
        print(f"familiarity  {report['unfamiliar_share']:.1%} of the images lie outside the training captchas' features (familiarity.py)")
    if report["unfamiliar_warning"]:
        print(report["unfamiliar_warning"])
    tta = f", test-time augmentation: shifts {report['tta_shifts']}" if len(report["tta_shifts"]) > 1 else ""
    print(f"\nspeed        {report['images_per_s']:.0f} images/s in the model (batch {report['batch_size']}, {report['device']}{tta})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_flags(p)
    p.add_argument("--data", nargs="+", default=None, help="parquet files, folders of them or of images (default: the training data)")
    p.add_argument("--labels", default=None, help="CSV/TSV of file,label for image folders in --data (default: the checkpoint's)")
    p.add_argument("--label-pattern", default=None, help="regular expression of the label in a file name (default: the checkpoint's)")
    p.add_argument("--split", default=None, choices=[*SPLITS, "all"], help="rows to evaluate (default: test; all with --data)")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--limit", type=int, default=0, help="evaluate at most this many images (0: all)")
    add_tta_flag(p)
    p.add_argument("--json", default=None, help="write every figure to this JSON file")
    p.add_argument("--confusion-png", default=None, help="confusion matrix picture (default: beside the checkpoint)")
    a = p.parse_args()
    model, codec, config, ckpt = recognizer_from_args(a)
    split = a.split or ("all" if a.data else "test")
    splits = SPLITS if split == "all" else (split,)
    config = dataclasses.replace(config, batch_size=a.batch_size, workers=a.workers, limit=a.limit)
    if a.data:
        config = dataclasses.replace(config, data=a.data, mix="")
    if a.labels is not None:
        config = dataclasses.replace(config, labels=a.labels)
    if a.label_pattern is not None:
        config = dataclasses.replace(config, label_pattern=a.label_pattern)
    loader, skipped = evaluation_loader(config, codec, splits)
    predictions, labels, confidences, seconds, flags = run_inference(model, codec, loader, progress=True, shifts=a.shifts)
    known = [f for f in flags if f is not None]
    report = full_report(predictions, labels, confidences) | {
        "unfamiliar_share": sum(known) / len(known) if known else None,
        "unfamiliar_warning": batch_warning(flags, confidences, model.feature_stats),
        "checkpoint": ckpt["path"],
        "data": config.data,
        "splits": split,
        "bad_images": len(loader.dataset) - len(labels),
        "skipped_labels": skipped,
        "images_per_s": len(labels) / max(seconds, 1e-9),
        "batch_size": a.batch_size,
        "device": "onnxruntime cpu" if a.onnx else str(get_device(a.device)),
        "tta_shifts": list(a.shifts),
    }
    png = save_confusion_png(predictions, labels, report, Path(a.confusion_png or Path(ckpt["path"]).parent / "confusion.png"))
    report["confusion_png"] = str(png) if png else None
    print_report(report)
    if png:
        print(f"confusion matrix: {png}")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
        print(f"json: {a.json}")


if __name__ == "__main__":
    main()

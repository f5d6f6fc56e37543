"""Recognition metrics (sequence accuracy, CER via jiwer, per-length accuracy, confusions,
coverage) and the training history files."""

import csv
from collections import Counter
from pathlib import Path

import jiwer
import numpy as np

THRESHOLDS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99)


def sequence_metrics(predictions: list[str], labels: list[str], ignore_case: bool = False) -> dict:
    """Whole-sequence accuracy and character error rate (jiwer.cer) over paired strings.

    An empty prediction counts as all deletions; labels must be non-empty.
    """
    if ignore_case:
        predictions, labels = [p.lower() for p in predictions], [t.lower() for t in labels]
    if not labels:
        return {"seq_acc": 0.0, "cer": 0.0, "n": 0}
    correct = sum(p == t for p, t in zip(predictions, labels, strict=True))
    return {"seq_acc": correct / len(labels), "cer": float(jiwer.cer(labels, predictions)), "n": len(labels)}


def accuracy_by_length(predictions: list[str], labels: list[str]) -> dict[int, dict]:
    """{label length: {"n", "seq_acc"}}, case-sensitive."""
    totals, correct = Counter(), Counter()
    for p, t in zip(predictions, labels, strict=True):
        totals[len(t)] += 1
        correct[len(t)] += p == t
    return {n: {"n": totals[n], "seq_acc": correct[n] / totals[n]} for n in sorted(totals)}


def character_confusions(predictions: list[str], labels: list[str]) -> Counter:
    """Counter of (true char, predicted char) over jiwer's character-level substitutions."""
    pairs: Counter = Counter()
    for p, t in zip(predictions, labels, strict=True):
        if p == t or not p:
            continue
        out = jiwer.process_characters(t, p)
        for chunk in out.alignments[0]:
            if chunk.type == "substitute":
                ref = t[chunk.ref_start_idx : chunk.ref_end_idx]
                hyp = p[chunk.hyp_start_idx : chunk.hyp_end_idx]
                pairs.update(zip(ref, hyp))
    return pairs


def coverage_at_thresholds(predictions: list[str], labels: list[str], confidences: list[float], thresholds=THRESHOLDS) -> list[dict]:
    """For each threshold t: the share of images answered (confidence >= t) and accuracy on those."""
    rows = []
    for t in thresholds:
        answered = [(p, y) for p, y, c in zip(predictions, labels, confidences, strict=True) if c >= t]
        rows.append(
            {
                "threshold": t,
                "coverage": len(answered) / max(1, len(labels)),
                "seq_acc": sum(p == y for p, y in answered) / len(answered) if answered else None,
            }
        )
    return rows


def calibration(predictions: list[str], labels: list[str], confidences: list[float], bins: int = 10) -> dict:
    """Mean whole-sequence confidence against accuracy, and the expected calibration error:
    the gap |mean confidence - accuracy| in ``bins`` equal-width confidence bins, weighted
    by the share of images in each (0 for a model whose confidence c is right c of the time)."""
    right = np.array([p == y for p, y in zip(predictions, labels, strict=True)], dtype=float)
    conf = np.asarray(confidences, dtype=float)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    gaps = [abs(conf[which == b].mean() - right[which == b].mean()) * (which == b).mean() for b in range(bins) if (which == b).any()]
    return {"mean_confidence": float(conf.mean()) if len(conf) else 0.0, "ece": float(sum(gaps))}


def full_report(predictions: list[str], labels: list[str], confidences: list[float], top_confusions: int = 15) -> dict:
    """Every figure accuracy_calculator.py prints, as one JSON-ready dict."""
    confusions = character_confusions(predictions, labels)
    return {
        "case_sensitive": sequence_metrics(predictions, labels),
        "case_insensitive": sequence_metrics(predictions, labels, ignore_case=True),
        "by_length": accuracy_by_length(predictions, labels),
        "top_confusions": [{"true": a, "predicted": b, "count": n} for (a, b), n in confusions.most_common(top_confusions)],
        "coverage": coverage_at_thresholds(predictions, labels, confidences),
        "calibration": calibration(predictions, labels, confidences),
    }


def write_history(run_dir: Path, history: list[dict]) -> None:
    """metrics.csv (one row per epoch) and curves.png (loss, validation accuracy and CER) in ``run_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax_loss.set(title="train loss", xlabel="epoch")
    ax_acc.plot(epochs, [h["val_seq_acc"] for h in history], marker="o", label="sequence accuracy")
    ax_acc.plot(epochs, [h["val_cer"] for h in history], marker="o", label="CER")
    ax_acc.set(title="validation", xlabel="epoch", ylim=(0, 1))
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)

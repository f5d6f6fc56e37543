"""Does a batch of captchas look like the ones the model was trained on? Two signals, both
measured on the model's validation captchas when it is calibrated (calibration.py) and kept
in the checkpoint:

- features: a diagonal Gaussian fitted to the backbone's pooled features; an image further
  from it than all but 1% of the validation captchas is unfamiliar. It catches looks outside
  everything the model saw (a single-style model shown another style, noise, photographs).
- confidence: a batch whose mean whole-answer confidence lies below the validation mean by
  more than chance allows (3 standard errors) is one the model cannot read as it reads its
  own captchas. A model trained on many looks places most new looks among them by features,
  yet knows it cannot read them: this is what says so.
"""

import math

import torch

QUANTILE = 0.99  # of the validation captchas' feature distances: the limit of a familiar image
BATCH_SHARE = 0.25  # a batch with more unfamiliar images than this gets the warning
MIN_BATCH = 10  # fewer answers say too little about the mean confidence
STANDARD_ERRORS = 3.0


def distances(embeddings: torch.Tensor, stats: dict) -> torch.Tensor:
    """embeddings (N, F) -> (N,): the mean squared z-score of each image's features."""
    mean, std = torch.tensor(stats["mean"]), torch.tensor(stats["std"])
    return (((embeddings.float().cpu() - mean) / std) ** 2).mean(dim=1)


def fit_stats(embeddings: torch.Tensor, confidences: torch.Tensor) -> dict:
    """What the checkpoint keeps of its validation captchas: embeddings (N, F) and their
    whole-answer confidences (N,)."""
    embeddings = embeddings.float().cpu()
    std = embeddings.std(0)
    stats = {"mean": embeddings.mean(0).tolist(), "std": std.clamp_min(0.01 * float(std.mean()) + 1e-8).tolist()}  # floor: dead channels
    stats["limit"] = float(torch.quantile(distances(embeddings, stats), QUANTILE))
    return stats | {"confidence_mean": float(confidences.mean()), "confidence_std": float(confidences.std())}


def unfamiliar(embeddings: torch.Tensor, stats: dict) -> torch.Tensor:
    """(N,) bool: the images whose features lie beyond the limit."""
    return distances(embeddings, stats) > stats["limit"]


def batch_warning(flags: list[bool | None], confidences: list[float], stats: dict | None) -> str | None:
    """One plain sentence when a batch (``flags`` and ``confidences`` of its answers) looks
    unlike the model's training captchas, else None; None too without ``stats`` (an ONNX file,
    a checkpoint from before calibration kept them)."""
    if stats is None or not flags:
        return None
    odd = sum(bool(f) for f in flags)
    if odd > BATCH_SHARE * len(flags):
        return (
            f"warning: {odd} of these {len(flags)} captchas ({odd / len(flags):.0%}) look unlike anything the model was trained on; "
            "expect few right answers (README: Adapting to your site)"
        )
    mean, expected = sum(confidences) / len(confidences), stats["confidence_mean"]
    if len(confidences) >= MIN_BATCH and mean < expected - STANDARD_ERRORS * stats["confidence_std"] / math.sqrt(len(confidences)):
        return (
            f"warning: the model is far less sure of these {len(confidences)} captchas (mean confidence {mean:.0%}) than of its "
            f"validation captchas ({expected:.0%}): they look unlike what it was trained to read; expect few right answers "
            "(README: Adapting to your site)"
        )
    return None

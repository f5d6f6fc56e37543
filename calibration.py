"""Temperature scaling: whole-sequence confidences that mean what they say.

Training's label smoothing holds each position's top probability near 0.95, so the
confidence of a whole answer (the product over all ``max_len`` positions, end/pad
positions included) could never reach 0.8, however sure the model was. One scalar T,
fitted on the validation split after training, rescales the logits (softmax(logits / T))
without changing any answer: the argmax is the same for every T > 0.
"""

from pathlib import Path

import torch
import torch.nn.functional as F

from checkpoints import save_checkpoint
from familiarity import fit_stats
from predict import answers
from utils import load_model

GRID = torch.logspace(-1.0, 0.7, 171)  # candidate temperatures 0.1 .. 5


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float, float]:
    """logits (N, L, K), targets (N, L) class ids -> (T, NLL at T = 1, NLL at T).

    T minimises the mean per-position cross-entropy of softmax(logits / T), searched on a
    log-spaced grid (a one-parameter convex problem; the grid step is 2.3%)."""
    flat, labels = logits.flatten(0, 1).float(), targets.flatten()
    nll = torch.stack([F.cross_entropy(flat / t, labels) for t in GRID])
    best = int(nll.argmin())
    return float(GRID[best]), float(F.cross_entropy(flat, labels)), float(nll[best])


@torch.no_grad()
def collect_logits(model: torch.nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``model`` (eval mode) over ``loader`` -> (logits (N, L, K), targets (N, L),
    embeddings (N, F))."""
    model.eval()
    device = next(model.parameters()).device
    logits, targets, embeddings = [], [], []
    for images, batch_targets, _ in loader:
        if images is not None:
            batch_logits, batch_embeddings = model(images.to(device, memory_format=torch.channels_last), with_embedding=True)
            logits.append(batch_logits.float().cpu())
            embeddings.append(batch_embeddings.float().cpu())
            targets.append(batch_targets)
    return torch.cat(logits), torch.cat(targets), torch.cat(embeddings)


def calibrate_checkpoint(path: Path, loader, device: str | torch.device = "cpu") -> tuple[float, float, float]:
    """Fit T for the checkpoint at ``path`` on ``loader`` (the validation split) and store it
    in the file as ``temperature``, with the validation captchas' feature and confidence
    statistics (familiarity.py) as ``feature_stats`` (atomically); returns fit_temperature's triple."""
    model, codec, _, ckpt = load_model(path, device)
    logits, targets, embeddings = collect_logits(model, loader)
    fitted = fit_temperature(logits, targets)
    state = {k: v for k, v in ckpt.items() if k != "path"}  # "path" is load_model's note, not file content
    confidences = answers(logits, fitted[0], codec)[2]  # (N,) whole-answer confidences, as the scripts read them
    save_checkpoint(Path(path), **(state | {"temperature": fitted[0], "feature_stats": fit_stats(embeddings, confidences)}))
    return fitted

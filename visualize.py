"""CaptchaVisualizer: pictures of what a trained model predicts, built on predict.py."""

import os
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from predict import Prediction, predict_captcha
from utils import load_model


class CaptchaVisualizer:
    """Loads a checkpoint (the newest in saved_models/ by default) and draws its predictions."""

    def __init__(self, checkpoint: str | os.PathLike | None = None, device: str = "cpu"):
        self.model, self.codec, self.config, self.checkpoint = load_model(checkpoint, device)

    def decode_labels(self, targets: torch.Tensor) -> list[str]:
        """targets (B, max_len) class ids -> label strings."""
        return [self.codec.decode(row) for row in targets]

    def decode_predictions(self, images: torch.Tensor) -> list[Prediction]:
        """images (B, C, H, W) -> predictions with confidences."""
        return predict_captcha(self.model, self.codec, images)

    @staticmethod
    def visualize_image(ax, image: torch.Tensor, title: str, colour: str = "black") -> None:
        """Draw a model-input tensor (C, H, W) in [-1, 1] on ``ax`` with a title."""
        pixels = ((image + 1) / 2).clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy()
        ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None)
        ax.set_title(title, fontsize=9, color=colour, family="monospace")
        ax.axis("off")

    def visualize_predictions(self, dataset, output: str | os.PathLike, n: int = 24) -> Path | None:
        """Save a grid of the first ``n`` decodable items of a CaptchaDataset with predictions;
        None (nothing saved) when none of the first 2n items decodes."""
        items = [it for it in (dataset[i] for i in range(min(len(dataset), n * 2))) if it is not None][:n]
        if not items:
            return None
        images = torch.stack([img for img, _ in items])
        truths = self.decode_labels(torch.stack([t for _, t in items]))
        return show_all_images_with_predictions(images, self.decode_predictions(images), truths, output)


def show_all_images_with_predictions(
    images: torch.Tensor,
    predictions: list[Prediction],
    truths: list[str | None],
    output: str | os.PathLike,
    cols: int = 4,
    show: bool = False,
) -> Path:
    """Grid PNG of model inputs (N, C, H, W) titled with prediction and confidence; green when
    it matches the truth, red (with the truth) when not, black when the truth is unknown."""
    rows = (len(images) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3, rows * 1.3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, pred, truth in zip(axes.ravel(), images, predictions, truths):
        title = f"{pred.text or '(empty)'} ({pred.confidence:.2f})"
        colour = "black" if truth is None else ("green" if pred.text == truth else "red")
        CaptchaVisualizer.visualize_image(ax, img, title + (f" / {truth}" if colour == "red" else ""), colour)
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    if show:
        plt.show()
    plt.close(fig)
    return output

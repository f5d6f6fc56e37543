"""Gradio web demo: drop in a captcha, read the model's answer and its confidences.

python interface.py                        # newest checkpoint, http://127.0.0.1:7860
python interface.py --checkpoint saved_models/<run>/best.pt --port 8000
python interface.py --onnx model.onnx          # onnxruntime instead of PyTorch
python interface.py --allowed-chars 0123456789 --length 4   # answers the site can show (also per request)
"""

import argparse
import os
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from PIL import Image

from captcha_generator import CaptchaStyle, generate_captcha, generate_random_string
from config import HelpFormatter
from data_loader import preprocess_image
from familiarity import batch_warning
from predict import add_tta_flag, predict_captcha
from utils import add_model_flags, recognizer_from_args

MAX_UPLOAD = "2mb"
UNFAMILIAR = "This captcha looks unlike anything the model was trained on: its answer is a guess, whatever its confidence."


def confidence_colour(confidence: float) -> str:
    """Red at 0, amber at 0.5, green at 1: a per-character confidence reads as good when high."""
    red, green = (min(1.0, 2 * (1 - confidence)), min(1.0, 2 * confidence))
    return f"#{round(220 * red):02x}{round(180 * green):02x}40"


# the demo shows each character's confidence as a label "0.00" ... "1.00"; gradio colours labels by this map
CONFIDENCE_COLOURS = {f"{v / 100:.2f}": confidence_colour(v / 100) for v in range(101)}


def model_card(ckpt: dict) -> str:
    """One Markdown line about the model: a checkpoint dict or load_onnx's info dict."""
    acc = ckpt.get("best_metric")
    acc_text = "n/a" if acc is None else f"{acc:.2%}"
    where = os.path.relpath(ckpt["path"])
    where = ckpt["path"] if where.startswith("..") else where
    return f"**Model** `{where}` · trained {ckpt.get('saved_at', 'unknown')} · best validation sequence accuracy {acc_text}"


def make_examples(folder: Path, n: int = 4, seed: int = 12345) -> list[str]:
    """A few generated captchas saved as PNG files for the examples gallery."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        style = CaptchaStyle()
        label = generate_random_string(rng, style.charset, 4, 6)
        path = folder / f"example_{label}.png"
        generate_captcha(label, rng, style).save(path)
        paths.append(str(path))
    return paths


def raw_upload(component: gr.Image) -> gr.Image:
    """Make ``component`` hand the uploaded file's path over undecoded, so that every bad
    upload reaches ``detect_captcha``'s own checks (Pillow's bomb guard included); gr.Image
    would otherwise open it first and fail with an internal error. (An instance override,
    not a subclass: gradio writes a .pyi stub beside any module defining a component class.)"""
    component.preprocess = lambda payload: None if payload is None else payload.path
    return component


class Recognizer:
    """Holds the model; ``detect_captcha`` is the function the page and the API call."""

    def __init__(self, loaded: tuple, shifts: tuple[int, ...] = (0,)):
        self.model, self.codec, self.config, self.ckpt = loaded  # load_recognizer's (model, codec, config, info)
        self.shifts = shifts  # predict_captcha's; TTA_SHIFTS with --tta

    def _read(self, path: str) -> torch.Tensor:
        try:
            return preprocess_image(Path(path).read_bytes(), self.config)
        except Image.DecompressionBombError:
            raise gr.Error("This image is too large to be a captcha (decompression-bomb guard).") from None
        except Exception as err:
            raise gr.Error(f"Not a readable image ({type(err).__name__}). Upload a PNG, JPEG, GIF, BMP or WebP captcha.") from None

    def _codec(self, allowed_chars: str, length: str):
        """The codec for a request's constraints (its own where it gives any, else the server's)."""
        if not (allowed_chars or length):
            return self.codec
        try:
            return self.codec.constrained(allowed_chars, length)
        except ValueError as err:
            raise gr.Error(str(err)) from None

    def _predict(self, path: str, allowed_chars: str, length: str):
        tensor = self._read(path)
        return predict_captcha(self.model, self._codec(allowed_chars, length), tensor, shifts=self.shifts)[0], tensor

    def detect_captcha(self, path: str | None, allowed_chars: str = "", length: str = ""):
        """One image path -> (text, confidence, [(char, confidence)], model-view image); the
        answer only of ``allowed_chars`` and of a ``length`` of "N" or "MIN-MAX" where given.

        No image (the input was cleared) gives empty outputs."""
        if not path:
            return "", None, [], None
        pred, tensor = self._predict(path, allowed_chars, length)
        if pred.unfamiliar:
            gr.Warning(UNFAMILIAR)
        view = ((tensor + 1) * 127.5).clamp(0, 255).byte().permute(1, 2, 0).squeeze(-1).numpy()
        chars = [(ch, f"{conf:.2f}") for ch, conf in zip(pred.text, pred.char_confidences)]
        return pred.text, round(pred.confidence, 4), chars, view

    def detect_many(self, paths: list[str] | None, allowed_chars: str = "", length: str = "") -> list[list]:
        """Several image paths -> table rows [file, prediction, confidence] (errors as rows)."""
        rows, flags, confidences = [], [], []
        for path in paths or []:
            try:
                pred, _ = self._predict(path, allowed_chars, length)
                rows.append([Path(path).name, pred.text, round(pred.confidence, 4)])
                flags.append(pred.unfamiliar)
                confidences.append(pred.confidence)
            except gr.Error as err:
                rows.append([Path(path).name, "", f"error: {err.message}"])
        warning = batch_warning(flags, confidences, self.model.feature_stats)
        if warning:
            gr.Warning(warning.removeprefix("warning: "))
        return rows


def build_app(recognizer: Recognizer | None, problem: str = "", allowed_chars: str = "", length: str = "") -> gr.Blocks:
    """The page; ``allowed_chars`` and ``length`` fill its answer-constraint boxes."""
    with gr.Blocks(title="Captcha recognizer") as app:
        gr.Markdown("# Captcha recognizer")
        if recognizer is None:
            gr.Markdown(f"**No model to serve yet.** {problem}")
            return app
        gr.Markdown(model_card(recognizer.ckpt))
        with gr.Row():
            allowed = gr.Textbox(allowed_chars, label="Allowed characters (empty: all the model reads)")
            lengths = gr.Textbox(length, label="Length: N or MIN-MAX (empty: as trained)")
        with gr.Tab("One captcha"):
            with gr.Row():
                image = raw_upload(gr.Image(type="filepath", label="Captcha", sources=["upload", "clipboard"]))
                with gr.Column():
                    text = gr.Textbox(label="Prediction", elem_id="prediction")
                    confidence = gr.Number(label="Whole-sequence confidence", elem_id="confidence")
                    chars = gr.HighlightedText(label="Per-character confidence", color_map=CONFIDENCE_COLOURS, show_legend=False)
                    view = gr.Image(label="What the model sees (padded and resized)", interactive=False)
            gr.Examples(make_examples(Path(tempfile.mkdtemp(prefix="captcha_examples_"))), inputs=image)
            image.change(recognizer.detect_captcha, [image, allowed, lengths], [text, confidence, chars, view], api_name="detect_captcha")
        with gr.Tab("Many captchas"):
            files = gr.File(file_count="multiple", label="Captcha images")
            table = gr.Dataframe(headers=["file", "prediction", "confidence"], label="Predictions")
            files.change(recognizer.detect_many, [files, allowed, lengths], table, api_name="detect_many")
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to serve on")
    p.add_argument("--port", type=int, default=7860, help="port to serve on")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    add_tta_flag(p)
    a = p.parse_args()
    try:
        recognizer, problem = Recognizer(recognizer_from_args(a), a.shifts), ""
    except SystemExit as err:  # no model yet, or an unusable file: the page says why
        recognizer, problem = None, str(err.code)
        print(problem)
    app = build_app(recognizer, problem, a.allowed_chars, a.length)
    app.queue().launch(server_name=a.host, server_port=a.port, share=a.share, show_error=True, max_file_size=MAX_UPLOAD)


if __name__ == "__main__":
    main()

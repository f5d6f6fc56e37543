"""interface.py end to end: the API through gradio_client, bad inputs, and a real browser."""

import io
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captcha_generator import CaptchaStyle, generate_captcha
from data_loader import preprocess_image
from predict import predict_captcha
from utils import load_model

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], cwd: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "interface.py"), "--port", str(port), *args],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stdout.read())
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError("interface.py did not start")


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    proc, url = start_server(["--checkpoint", str(tiny_checkpoint)], tmp_path_factory.mktemp("srv"))
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def captcha_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "captcha.png"
    generate_captcha("ab12", np.random.default_rng(3), CaptchaStyle(charset="abc123")).save(path)
    return path


def expected(checkpoint: Path, path: Path):
    model, codec, config, _ = load_model(checkpoint)
    return predict_captcha(model, codec, preprocess_image(path.read_bytes(), config))[0]


def write(tmp_path: Path, name: str, image: Image.Image | None = None, raw: bytes | None = None) -> Path:
    path = tmp_path / name
    if image is not None:
        buf = io.BytesIO()
        image.save(buf, "PNG")
        raw = buf.getvalue()
    path.write_bytes(raw)
    return path


def test_api_call_matches_the_shared_prediction_path(server, tiny_checkpoint, captcha_file):
    from gradio_client import Client, handle_file

    text, confidence, chars, view = Client(server, verbose=False).predict(handle_file(str(captcha_file)), api_name="/detect_captcha")
    want = expected(tiny_checkpoint, captcha_file)
    assert text == want.text
    assert abs(confidence - want.confidence) < 1e-3
    assert len(chars) == len(want.text)
    assert Image.open(view).size == (96, 32)  # the tiny model's input, as the model sees it


def test_api_answers_within_the_allowed_characters_and_length(server, captcha_file):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    text, confidence, chars, _ = client.predict(handle_file(str(captcha_file)), "1a", "3", api_name="/detect_captcha")
    assert len(text) == 3 and set(text) <= set("1a") and len(chars) == 3 and 0 <= confidence <= 1
    with pytest.raises(Exception, match="cannot read 'z'"):
        client.predict(handle_file(str(captcha_file)), "z", "", api_name="/detect_captcha")


def test_tta_recognizer_answers_as_predict_captcha_with_the_shifts(tiny_checkpoint, captcha_file):
    from interface import Recognizer
    from predict import TTA_SHIFTS

    model, codec, config, _ = load_model(tiny_checkpoint)
    image = preprocess_image(captcha_file.read_bytes(), config)
    for shifts in ((0,), TTA_SHIFTS):
        text, confidence, _, _ = Recognizer(load_model(tiny_checkpoint), shifts=shifts).detect_captcha(str(captcha_file))
        want = predict_captcha(model, codec, image, shifts=shifts)[0]
        assert (text, confidence) == (want.text, round(want.confidence, 4))


@pytest.mark.parametrize(
    "name, image",
    [
        ("gray.png", Image.new("L", (150, 50), 200)),
        ("rgba.png", Image.new("RGBA", (150, 50), (0, 0, 0, 0))),
        ("palette.png", Image.new("P", (150, 50), 7)),
        ("deep.png", Image.fromarray(np.full((50, 150), 30000, dtype=np.uint16))),
        ("dot.png", Image.new("RGB", (1, 1), "red")),
    ],
)
def test_api_answers_every_image_mode(server, tmp_path, name, image):
    from gradio_client import Client, handle_file

    text, confidence, _, _ = Client(server, verbose=False).predict(
        handle_file(str(write(tmp_path, name, image))), api_name="/detect_captcha"
    )
    assert isinstance(text, str) and 0.0 <= confidence <= 1.0


@pytest.mark.parametrize(
    "name, raw, message",
    [
        ("notes.png", b"this is a text file", "Not a readable image"),
        ("empty.png", b"", "Not a readable image"),
        ("cut.png", None, "Not a readable image"),
        ("bomb.png", None, "too large"),
    ],
)
def test_api_bad_input_gives_a_readable_error_and_the_server_goes_on(server, tmp_path, captcha_file, name, raw, message):
    from gradio_client import Client, handle_file

    if name == "cut.png":
        raw = captcha_file.read_bytes()[:300]
    if name == "bomb.png":
        buf = io.BytesIO()
        Image.new("1", (30000, 30000)).save(buf, "PNG")
        raw = buf.getvalue()
    client = Client(server, verbose=False)
    with pytest.raises(Exception, match=message):
        client.predict(handle_file(str(write(tmp_path, name, raw=raw))), api_name="/detect_captcha")
    text, _, _, _ = client.predict(handle_file(str(captcha_file)), api_name="/detect_captcha")
    assert isinstance(text, str)


def test_many_images_give_a_table(server, captcha_file, tmp_path):
    from gradio_client import Client, handle_file

    bad = write(tmp_path, "bad.png", raw=b"nope")
    table = Client(server, verbose=False).predict([handle_file(str(captcha_file)), handle_file(str(bad))], api_name="/detect_many")
    rows = table["data"] if isinstance(table, dict) else table
    assert [r[0] for r in rows] == ["captcha.png", "bad.png"]
    assert str(rows[1][2]).startswith("error: Not a readable image")


def test_without_a_trained_model_the_demo_serves_the_shipped_base(tmp_path):
    proc, url = start_server([], tmp_path)
    try:
        config = urllib.request.urlopen(url + "config").read().decode()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "reading with the shipped general base" in out and "Traceback" not in out
    assert "pretrained/general.pt" in config


def test_a_missing_checkpoint_page_says_what_is_wrong(tmp_path):
    proc, url = start_server(["--checkpoint", "missing.pt"], tmp_path)
    try:
        page = urllib.request.urlopen(url).read().decode()
        config = urllib.request.urlopen(url + "config").read().decode()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "missing.pt: no such checkpoint file" in out and "Traceback" not in out
    assert "No model to serve yet" in config and "<html" in page.lower()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_browser_upload_shows_prediction_and_errors(server, tiny_checkpoint, captcha_file, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    want = expected(tiny_checkpoint, captcha_file)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server)
        page.locator("input[type=file]").first.set_input_files(str(captcha_file))
        prediction = page.locator("#prediction textarea")
        expect(prediction).to_have_value(want.text or "", timeout=30000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(tmp_path / "interface_view.png"), full_page=True)
        page.goto(server)
        page.locator("input[type=file]").first.set_input_files(str(write(tmp_path, "notes.png", raw=b"plain text, not an image")))
        expect(page.get_by_text("Not a readable image").first).to_be_visible(timeout=30000)
        browser.close()


def test_per_character_confidence_is_green_when_high_and_red_when_low():
    from interface import CONFIDENCE_COLOURS

    def rgb(label):
        colour = CONFIDENCE_COLOURS[label]
        return int(colour[1:3], 16), int(colour[3:5], 16)

    (r1, g1), (r0, g0), (rh, gh) = rgb("1.00"), rgb("0.00"), rgb("0.97")
    assert g1 > 3 * r1 and r0 > 3 * g0 and gh > rh  # 0.97 and 1.00 both read as good
    assert len(CONFIDENCE_COLOURS) == 101

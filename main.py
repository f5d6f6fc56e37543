"""Train the EfficientNet multi-head captcha recognizer.

python main.py                       # generated data if data/ is empty, then train
python main.py --data data/ --epochs 10
python main.py --resume saved_models/<run>/last.pt
torchrun --standalone --nproc_per_node=2 main.py --data data/   # data-parallel, one process per GPU (or CPU share)
"""

import time
from dataclasses import replace
from pathlib import Path

import distributed
from calibration import calibrate_checkpoint
from captcha_generator import CaptchaStyle, generate_captcha_data
from checkpoints import SHIPPED, config_from_checkpoint, load_checkpoint
from codec import LabelCodec
from config import Config, finetune_config, parse_config, resumed_config
from data_loader import load_data
from device import get_device
from image_folders import find_datasets
from train import Interrupted, train_model
from visualize import CaptchaVisualizer


def main() -> None:
    started = time.perf_counter()  # --time-limit counts from here: data generation is part of the run
    config, given = parse_config(__doc__)
    distributed.setup()
    try:
        run(config, given, started)
    finally:
        distributed.cleanup()


def run(config: Config, given: set[str], started: float) -> None:
    """Check the command line against the checkpoint it resumes or fine-tunes, load the data
    (generating captchas into an empty data/), train, then calibrate and draw the predictions."""
    say = print if distributed.is_main() else lambda *_: None
    if config.unlabelled and not (config.init_from or config.resume) and SHIPPED.is_file():
        say(f"note: semi-supervised training starts from the shipped general base {SHIPPED} (--init-from to choose another)")
        config = replace(config, init_from=str(SHIPPED))
    try:
        if config.resume:
            config = resumed_config(config_from_checkpoint(load_checkpoint(config.resume)), config, given)
        elif config.init_from:
            config = finetune_config(config_from_checkpoint(load_checkpoint(config.init_from)), config, given)
        _ = config.mix_weights  # checks --mix against --data before any work
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"main.py: {err}") from None
    m = config.model
    codec = LabelCodec.for_model(m)
    with distributed.main_rank_first():  # rank 0 generates data and builds the data caches once
        if config.data == ["data"] and not find_datasets(config.data):
            target = Path("data/generated.parquet")
            print(f"note: no parquet file in data/; generating {config.default_count} captchas into {target} (the shared schema)")
            style = CaptchaStyle(charset=m.charset, min_len=min(4, m.max_len), max_len=m.max_len)
            generate_captcha_data(config.default_count, target, seed=config.seed, style=style, workers=config.workers or None)
        try:
            loaders = load_data(config, codec)
        except (ValueError, FileNotFoundError) as err:
            raise SystemExit(f"main.py: {err}") from None
    if loaders["skipped"]:
        say(f"skipped rows by reason: {loaders['skipped']}")
    val, test = distributed.sum_all([len(loaders["val"].dataset), len(loaders["test"].dataset)])  # sharded under torchrun
    say(f"train: {len(loaders['train'].dataset)} rows, val: {val:.0f} rows, test: {test:.0f} rows")
    try:
        run_dir = train_model(config, loaders, started)
    except Interrupted as stopped:
        raise SystemExit(f"main.py: {stopped}") from None
    except OSError as err:
        raise SystemExit(f"main.py: {err}") from None
    if not distributed.is_main():
        return
    picture = "none (no validation images)"
    if len(loaders["val"].dataset):
        for name in ("best.pt", "last.pt"):  # last.pt too: whoever reads it gets confidences that mean what they say
            temperature, before, after = calibrate_checkpoint(run_dir / name, loaders["val"], get_device(config.device))
            fit = f"temperature {temperature:.3f} in {name} (NLL {before:.4f} -> {after:.4f})"
            print(f"confidences calibrated on the validation split: {fit}")
        shown = CaptchaVisualizer(run_dir / "best.pt").visualize_predictions(loaders["val"].dataset, run_dir / "predictions.png")
        picture = shown or picture
    print(f"checkpoints: {run_dir / 'best.pt'} (best), {run_dir / 'last.pt'} (last)")
    print(f"metrics: {run_dir / 'metrics.csv'}, curves: {run_dir / 'curves.png'}, predictions: {picture}")


if __name__ == "__main__":
    main()

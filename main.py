"""Train the EfficientNet multi-head captcha recognizer.

python main.py                       # generated data if data/ is empty, then train
python main.py --data data/ --epochs 10
python main.py --resume saved_models/<run>/last.pt
torchrun --standalone --nproc_per_node=2 main.py --data data/   # data-parallel, one process per GPU (or CPU share)
"""

import argparse
import time
from pathlib import Path

import distributed
from calibration import calibrate_checkpoint
from captcha_generator import CaptchaStyle, generate_captcha_data
from checkpoints import config_from_checkpoint, load_checkpoint
from codec import LabelCodec
from config import Config, HelpFormatter, add_config_args, config_from_args, finetune_config, resumed_config
from data_loader import load_data
from device import get_device
from inputs import find_parquet_files
from utils import Interrupted, train_model
from visualize import CaptchaVisualizer


def main() -> None:
    started = time.perf_counter()  # --time-limit counts from here: data generation is part of the run
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_args(parser)
    config = config_from_args(parser.parse_args())
    distributed.setup()
    try:
        train(config, started)
    finally:
        distributed.cleanup()


def train(config: Config, started: float) -> None:
    say = print if distributed.is_main() else lambda *_: None
    try:
        if config.resume:
            config = resumed_config(config_from_checkpoint(load_checkpoint(config.resume)), config)
        elif config.init_from:
            config = finetune_config(config_from_checkpoint(load_checkpoint(config.init_from)), config)
        _ = config.mix_weights  # checks --mix against --data before any work
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"main.py: {err}") from None
    codec = LabelCodec(config.charset, config.max_len)
    with distributed.main_rank_first():  # rank 0 generates data and builds the data caches once
        if not find_parquet_files(config.data) and config.data == ["data"]:
            target = Path("data/generated.parquet")
            print(f"note: no parquet file in data/; generating {config.default_count} captchas into {target} (the shared schema)")
            style = CaptchaStyle(charset=config.charset, min_len=min(4, config.max_len), max_len=config.max_len)
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

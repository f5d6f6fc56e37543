"""Train the EfficientNet multi-head captcha recognizer.

python main.py                       # generated data if data/ is empty, then train
python main.py --data data/ --epochs 10
python main.py --resume saved_models/<run>/last.pt
"""

import argparse
from pathlib import Path

from captcha_generator import CaptchaStyle, generate_captcha_data
from config import add_config_args, config_from_args
from data_loader import load_data
from inputs import find_parquet_files
from labels import LabelCodec
from utils import config_from_checkpoint, load_checkpoint, train_model
from visualize import CaptchaVisualizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    config = config_from_args(parser.parse_args())
    if config.resume:
        resume = config.resume
        config = config_from_checkpoint(load_checkpoint(resume))
        config.resume = resume
    if not find_parquet_files(config.data) and config.data == ["data"]:
        target = Path("data/generated.parquet")
        print(f"note: no parquet file in data/; generating {config.default_count} captchas into {target} (the shared schema)")
        style = CaptchaStyle(charset=config.charset, min_len=min(4, config.max_len), max_len=config.max_len)
        generate_captcha_data(config.default_count, target, seed=config.seed, style=style, workers=config.workers or None)
    codec = LabelCodec(config.charset, config.max_len)
    try:
        loaders = load_data(config, codec)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"main.py: {err}") from None
    if loaders["skipped"]:
        print(f"skipped rows by reason: {loaders['skipped']}")
    print(", ".join(f"{s}: {len(loaders[s].dataset)} rows" for s in ("train", "val", "test")))
    run_dir = train_model(config, loaders)
    picture = CaptchaVisualizer(run_dir / "best.pt").visualize_predictions(loaders["val"].dataset, run_dir / "predictions.png")
    print(f"checkpoints: {run_dir / 'best.pt'} (best), {run_dir / 'last.pt'} (last)")
    print(f"metrics: {run_dir / 'metrics.csv'}, curves: {run_dir / 'curves.png'}, predictions: {picture}")


if __name__ == "__main__":
    main()

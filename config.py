"""The one training configuration: a dataclass whose fields are also main.py's CLI flags.

Every checkpoint stores ``asdict(config)``, so evaluation and serving rebuild the exact
model and preprocessing from the checkpoint file alone.
"""

import argparse
import os
from dataclasses import MISSING, dataclass, field, fields, replace

from labels import DEFAULT_CHARSET

CPU_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
DEFAULT_WORKERS = min(CPU_CORES, 12)


def _opt(default, help: str, type=None, nargs=None, choices=None):
    return field(default=default, metadata={"help": help, "type": type, "nargs": nargs, "choices": choices})


@dataclass
class Config:
    # data
    data: list[str] = field(default_factory=lambda: ["data"], metadata={"help": "parquet files, folders or globs", "nargs": "+"})
    split_ratios: str = _opt("0.9,0.05,0.05", "train,val,test ratios when the data has no split column")
    limit: int = _opt(0, "use at most this many rows of each split (0: all); for smoke runs")
    default_count: int = _opt(50000, "captchas generated into data/ when it holds no parquet file")
    mix: str = _opt(
        "",
        "weights of the --data sources, e.g. 0.3,0.7: each epoch draws that share of its samples from each; "
        "validation and test use the first source only ('': all --data pooled)",
    )
    augment: str = _opt(
        "auto",
        "training augmentation (small rotation and shift, warp, colour jitter, blur): on, off, or auto (on below 20,000 training rows)",
        choices=("on", "off", "auto"),
    )
    # model and input
    charset: str = _opt(DEFAULT_CHARSET, "characters the model reads (case-sensitive)")
    max_len: int = _opt(8, "longest label the model can output")
    img_height: int = _opt(40, "model input height; images keep their aspect ratio and are padded")
    img_width: int = _opt(128, "model input width")
    channels: int = _opt(3, "input channels: 3 (RGB) or 1 (grayscale)")
    variant: str = _opt("efficientnet-b0", "EfficientNet variant (efficientnet-b0 ... b7)")
    stages: int = _opt(4, "EfficientNet stages kept (7: all); 4 learns fastest on a CPU budget, see bench/RESULTS.md")
    width_mult: float = _opt(1.0, "channel multiplier overriding the variant's (0: the variant's own)")
    depth_mult: float = _opt(0.5, "depth multiplier overriding the variant's (0: the variant's own)")
    width_strides: int = _opt(3, "horizontal downsamplings of the backbone (5 = stock EfficientNet)")
    conv_head: bool = _opt(
        False, "keep EfficientNet's final 1x1 convolution to 1280 channels; after 4 stages it takes 38%% of a CPU training step"
    )
    head_dim: int = _opt(256, "width of the per-position attention heads")
    dropout: float = _opt(0.1, "dropout in the heads")
    drop_connect: float = _opt(0.0, "EfficientNet stochastic-depth rate (its own default is 0.2)")
    pretrained_weights: str = _opt("", "local EfficientNet ImageNet state_dict file to start the backbone from")
    # optimisation
    epochs: int = _opt(8, "training epochs")
    time_limit: float = _opt(
        26.0,
        "minutes the whole run may take, data generation, validation and calibration included: the first steps are "
        "timed and the one-cycle schedule is planned to end in time, then re-planned after each epoch (0: no limit, "
        "--epochs alone decides)",
    )
    pretrain_epochs: int = _opt(-1, "epochs with the backbone frozen first (-1: 1 with pretrained weights, else 0)")
    batch_size: int = _opt(32, "images per step; 32 learns most per CPU minute (bench/RESULTS.md), raise it on a GPU")
    lr: float = _opt(3e-3, "peak learning rate (AdamW, one-cycle schedule)")
    weight_decay: float = _opt(0.05, "AdamW weight decay")
    label_smoothing: float = _opt(0.05, "cross-entropy label smoothing")
    ctc_weight: float = _opt(1.0, "weight of the auxiliary CTC loss on the feature columns (0: off)")
    grad_clip: float = _opt(2.0, "gradient norm clip (0: off)")
    channels_last: bool = _opt(True, "channels_last memory format (2x faster on CPU here)")
    amp: bool = _opt(False, "mixed precision: bfloat16 autocast where supported, else float16 with a GradScaler (CUDA)")
    sync_bn: bool = _opt(False, "SyncBatchNorm across torchrun processes (CUDA only), for small per-GPU batches")
    # run
    seed: int = _opt(0, "random seed for data order, init and dropout")
    workers: int = _opt(DEFAULT_WORKERS, "DataLoader worker processes (default: one per CPU core this process may use, at most 12)")
    device: str = _opt("auto", "auto, cpu, cuda or mps")
    out_dir: str = _opt("saved_models", "where run folders are created")
    run_name: str = _opt("", "run folder name (default: a timestamp)")
    resume: str = _opt("", "checkpoint (last.pt) to continue training from")
    init_from: str = _opt(
        "", "checkpoint to fine-tune: its model and input settings are used, its charset grows by any new --charset characters"
    )
    snapshot_minutes: float = _opt(
        0.0, "also save minutes-<m>.pt every this many minutes of training (0: never), for accuracy-vs-time curves"
    )
    patience: int = _opt(0, "stop after this many epochs without a better validation accuracy (0: never)")
    max_steps: int = _opt(0, "stop after this many steps per epoch (0: full epochs); for smoke runs")

    @property
    def ratios(self) -> tuple[float, float, float]:
        return tuple(float(r) for r in self.split_ratios.split(","))

    @property
    def mix_weights(self) -> list[float] | None:
        """One weight per --data source (normalised), or None when the sources are pooled."""
        if not self.mix:
            return None
        weights = [float(w) for w in self.mix.split(",")]
        if len(weights) != len(self.data) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"--mix {self.mix!r}: give one non-negative weight per --data source ({len(self.data)})")
        return [w / sum(weights) for w in weights]


# settings that fix the model's shape; fine-tuning (--init-from) takes them from the checkpoint
MODEL_FIELDS = (
    "max_len",
    "img_height",
    "img_width",
    "channels",
    "variant",
    "stages",
    "width_mult",
    "depth_mult",
    "width_strides",
    "conv_head",
    "head_dim",
)

# model settings added after checkpoints were first written, with the value that rebuilds those older files
LEGACY_MODEL_SETTINGS = {"conv_head": True}


def finetune_config(base: Config, asked: Config) -> Config:
    """``asked`` with the model settings of the checkpoint's config ``base``; the charset is
    the checkpoint's, extended by any characters of ``asked.charset`` it lacks."""
    wanted = asked.charset if asked.charset != DEFAULT_CHARSET else ""  # grow only when --charset was given
    grown = base.charset + "".join(dict.fromkeys(c for c in wanted if c not in base.charset))
    return replace(asked, charset=grown, **{name: getattr(base, name) for name in MODEL_FIELDS})


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every script's --help: its docstring as written, and each option's default after its
    help text, unless the text names it already or there is none (None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        if not action.option_strings or "(default" in help or action.default is None or action.default is argparse.SUPPRESS:
            return help
        return f"{help} (default: {_shown(action.default)})"


def _shown(default) -> str:
    """A default as --help shows it (argparse expands %(default)s)."""
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, list):
        return " ".join(str(d) for d in default)
    return "''" if default == "" else "%(default)s"


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """One ``--flag-name`` per Config field, with its default and help text (HelpFormatter shows the default)."""
    for f in fields(Config):
        default = f.default_factory() if f.default is MISSING else f.default
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=f.metadata["help"])
        else:
            kind = f.metadata.get("type") or (str if isinstance(default, list) else type(default))
            parser.add_argument(
                flag, type=kind, nargs=f.metadata.get("nargs"), choices=f.metadata.get("choices"), default=default, help=f.metadata["help"]
            )


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(**{f.name: getattr(args, f.name) for f in fields(Config)})


# settings a resumed run may change: where and how it runs, not what it trains
RUN_TIME_FIELDS = ("resume", "workers", "device", "out_dir", "run_name", "data", "snapshot_minutes")


def resumed_config(saved: Config, asked: Config) -> Config:
    """The checkpoint's configuration with the run-time settings given on the command line.

    A training setting given on the command line that differs from the checkpoint's (say
    another charset or image size) is an error naming each one, not a silent override.
    """
    default = Config()
    changed = [
        f"--{f.name.replace('_', '-')} {getattr(asked, f.name)!r} (checkpoint: {getattr(saved, f.name)!r})"
        for f in fields(Config)
        if f.name not in RUN_TIME_FIELDS and getattr(asked, f.name) not in (getattr(default, f.name), getattr(saved, f.name))
    ]
    if changed:
        raise ValueError("--resume continues a run with its own settings; these differ: " + "; ".join(changed))
    return replace(saved, **{name: getattr(asked, name) for name in RUN_TIME_FIELDS if getattr(asked, name) != getattr(default, name)})

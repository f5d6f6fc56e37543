"""The one training configuration, and the helper that turns any dataclass into CLI flags.

``Config`` holds a run's settings with the model's own ``ModelConfig`` nested inside it
(``CNNModel`` takes that alone); main.py's flags stay flat (``--img-height``, not
``--model.img-height``). Every checkpoint stores ``asdict(config)``, so evaluation and
serving rebuild the exact model and preprocessing from the checkpoint file alone.
"""

import argparse
import os
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace

from labels import DEFAULT_CHARSET, DEFAULT_LABEL_PATTERN

CPU_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
DEFAULT_WORKERS = min(CPU_CORES, 12)
DEFAULT_SPLIT_RATIOS = "0.9,0.05,0.05"


def option(default, help: str, type=None, nargs=None, choices=None):
    """A dataclass field that is also a CLI flag (see add_dataclass_args)."""
    return field(default=default, metadata={"help": help, "type": type, "nargs": nargs, "choices": choices})


def list_option(default: list, help: str):
    return field(default_factory=lambda: list(default), metadata={"help": help, "nargs": "+"})


@dataclass
class ModelConfig:
    """Everything CNNModel is built from (nanoGPT's GPTConfig): what it reads and its shape."""

    charset: str = option(DEFAULT_CHARSET, "characters the model reads (case-sensitive unless --ignore-case)")
    ignore_case: bool = option(
        False, "read labels lower-cased: the charset folds to one class per letter (for sites that accept either case)"
    )
    max_len: int = option(8, "longest label the model can output")
    min_len: int = option(0, "shortest answer it gives: reading never ends before it (0: the shortest training label)")
    img_height: int = option(40, "model input height; images keep their aspect ratio and are padded")
    img_width: int = option(128, "model input width")
    channels: int = option(3, "input channels: 3 (RGB) or 1 (grayscale)")
    variant: str = option("efficientnet-b0", "EfficientNet variant (efficientnet-b0 ... b7)")
    stages: int = option(4, "EfficientNet stages kept (7: all); 4 learns fastest on a CPU budget, see bench/RESULTS.md")
    width_mult: float = option(1.0, "channel multiplier overriding the variant's (0: the variant's own)")
    depth_mult: float = option(0.5, "depth multiplier overriding the variant's (0: the variant's own)")
    width_strides: int = option(3, "horizontal downsamplings of the backbone (5 = stock EfficientNet)")
    conv_head: bool = option(
        False, "keep EfficientNet's final 1x1 convolution to 1280 channels; after 4 stages it takes 38%% of a CPU training step"
    )
    head_dim: int = option(256, "width of the per-position attention heads")
    dropout: float = option(0.1, "dropout in the heads")
    drop_connect: float = option(0.0, "EfficientNet stochastic-depth rate (its own default is 0.2)")

    def __post_init__(self):
        if self.ignore_case:
            self.charset = "".join(dict.fromkeys(self.charset.lower()))

    @property
    def num_classes(self) -> int:
        """The end/pad class (index 0) plus one class per character."""
        return len(self.charset) + 1


# settings that regularise training without changing the model's tensors: a fine-tune may choose its own
REGULARISATION_FIELDS = ("dropout", "drop_connect")

# model settings added after checkpoints were first written, with the value that rebuilds those older files
LEGACY_MODEL_SETTINGS = {"conv_head": True, "min_len": 1}


@dataclass
class Config:
    # data
    data: list[str] = list_option(["data"], "parquet files, folders (of parquet files or of image files) or globs")
    labels: str = option("", "CSV/TSV of file,label for the image folders in --data (default: labels from the file names)")
    label_pattern: str = option(DEFAULT_LABEL_PATTERN, "regular expression whose first group is the label in an image file's name")
    split_ratios: str = option(DEFAULT_SPLIT_RATIOS, "train,val,test ratios when the data has no split column")
    limit: int = option(0, "use at most this many rows of each split (0: all); for smoke runs")
    default_count: int = option(50000, "captchas generated into data/ when it holds no parquet file")
    mix: str = option(
        "",
        "weights of the --data sources, e.g. 0.3,0.7: each epoch draws that share of its samples from each; "
        "validation and test use the first source only ('': all --data pooled)",
    )
    augment: str = option(
        "auto",
        "training augmentation (small rotation and shift, warp, colour jitter, blur): on, off, or auto (on below 20,000 training rows)",
        choices=("on", "off", "auto"),
    )
    # semi-supervised: the site's unlabelled captchas (FixMatch-style consistency with an EMA teacher)
    unlabelled: list[str] = list_option(
        [], "unlabelled captchas: parquet files or folders of image files; the student learns the teacher's confident answers"
    )
    mu: int = option(2, "unlabelled images per labelled image in each step")
    threshold: float = option(0.95, "confidence the teacher needs for its answer to be learnt (see --gate)")
    gate: str = option(
        "character",
        "'character': learn each position the teacher reads with at least --threshold; 'sequence': only whole answers that clear it",
        choices=("character", "sequence"),
    )
    unlabelled_weight: float = option(1.0, "weight of the loss on the unlabelled images")
    ema: bool = option(False, "keep the EMA teacher in a supervised run too; best.pt takes whichever of model and teacher validates better")
    ema_decay: float = option(
        0.99, "decay of the teacher, an exponential moving average of the weights (0.999 lagged far behind in 1,000-step fine-tunes)"
    )
    strong_ops: int = option(2, "RandAugment operations of the strong (student's) view")
    strong_magnitude: int = option(10, "RandAugment magnitude of the strong view (0-30)")
    # model and input
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrained_weights: str = option("", "local EfficientNet ImageNet state_dict file to start the backbone from")
    # optimisation
    epochs: int = option(8, "training epochs")
    time_limit: float = option(
        26.0,
        "minutes the whole run may take, data generation, validation and calibration included: the first steps are "
        "timed and the one-cycle schedule is planned to end in time, then re-planned after each epoch (0: no limit, "
        "--epochs alone decides)",
    )
    pretrain_epochs: int = option(-1, "epochs with the backbone frozen first (-1: 1 with pretrained weights, else 0)")
    batch_size: int = option(32, "images per step; 32 learns most per CPU minute (bench/RESULTS.md), raise it on a GPU")
    lr: float = option(3e-3, "peak learning rate (AdamW, one-cycle schedule)")
    weight_decay: float = option(0.05, "AdamW weight decay")
    label_smoothing: float = option(0.05, "cross-entropy label smoothing")
    ctc_weight: float = option(1.0, "weight of the auxiliary CTC loss on the feature columns (0: off)")
    grad_clip: float = option(2.0, "gradient norm clip (0: off)")
    channels_last: bool = option(True, "channels_last memory format (2x faster on CPU here)")
    amp: bool = option(False, "mixed precision: bfloat16 autocast where supported, else float16 with a GradScaler (CUDA)")
    sync_bn: bool = option(False, "SyncBatchNorm across torchrun processes (CUDA only), for small per-GPU batches")
    # run
    seed: int = option(0, "random seed for data order, init and dropout")
    workers: int = option(DEFAULT_WORKERS, "DataLoader worker processes (default: one per CPU core this process may use, at most 12)")
    device: str = option("auto", "auto, cpu, cuda or mps")
    out_dir: str = option("saved_models", "where run folders are created")
    run_name: str = option("", "run folder name (default: a timestamp)")
    resume: str = option("", "checkpoint (last.pt) to continue training from")
    init_from: str = option(
        "", "checkpoint to fine-tune: its model and input settings are used, its charset grows by any new --charset characters"
    )
    snapshot_minutes: float = option(
        0.0, "also save minutes-<m>.pt every this many minutes of training (0: never), for accuracy-vs-time curves"
    )
    patience: int = option(0, "stop after this many epochs without a better validation accuracy (0: never)")
    max_steps: int = option(0, "stop after this many steps per epoch (0: full epochs); for smoke runs")

    @property
    def ratios(self) -> tuple[float, float, float]:
        return parse_ratios(self.split_ratios)

    @property
    def mix_weights(self) -> list[float] | None:
        """One weight per --data source (normalised), or None when the sources are pooled."""
        if not self.mix:
            return None
        weights = [float(w) for w in self.mix.split(",")]
        if len(weights) != len(self.data) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"--mix {self.mix!r}: give one non-negative weight per --data source ({len(self.data)})")
        return [w / sum(weights) for w in weights]

    @classmethod
    def from_flat(cls, settings: dict) -> "Config":
        """A Config from one flat mapping of field names (a checkpoint's config dict, nested or
        written before ModelConfig existed; CLI values; keyword arguments); unknown names are ignored."""
        model = settings.get("model")
        model = dict(model) if isinstance(model, dict) else {k: v for k, v in settings.items() if k in _names(ModelConfig)}
        own = {k: v for k, v in settings.items() if k in _names(cls) and k != "model"}
        return cls(**own, model=ModelConfig(**model))

    def flat(self) -> dict:
        """Every setting by its flag's name, the model's included: the inverse of from_flat."""
        settings = asdict(self)
        model = settings.pop("model")
        return settings | model


def _names(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def parse_ratios(text: str) -> tuple[float, float, float]:
    """'0.9,0.05,0.05' -> (0.9, 0.05, 0.05): the train, val and test shares."""
    ratios = tuple(float(r) for r in text.split(","))
    if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0:
        raise ValueError(f"split ratios {text!r}: give three non-negative numbers, train,val,test")
    return ratios


def finetune_config(base: Config, asked: Config, given: set[str]) -> Config:
    """``asked`` with the model of the checkpoint's config ``base``: its shape always, its
    regularisation and case folding unless given, its charset extended by any characters of ``asked``'s
    that it lacks when --charset is ``given`` (the names of the flags on the command line);
    the shortest answer is the fine-tune's own (by default its shortest training label)."""
    wanted = asked.model.charset if "charset" in given else ""
    grown = base.model.charset + "".join(dict.fromkeys(c for c in wanted if c not in base.model.charset))
    own = {name: getattr(asked.model, name) for name in (*REGULARISATION_FIELDS, "ignore_case") if name in given}
    return replace(asked, model=replace(base.model, charset=grown, min_len=asked.model.min_len, **own))


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
    if isinstance(default, list | tuple):
        return " ".join(str(d) for d in default) or "none"
    return "''" if default == "" else "%(default)s"


def add_dataclass_args(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (), defaults: bool = True) -> None:
    """One ``--flag-name`` per field of dataclass ``cls`` (and, flat, of any dataclass nested in
    it), with the field's default and help text; ``skip`` names fields left off the CLI.
    Without ``defaults`` an absent flag leaves no attribute, so the parsed names are those given."""
    for f in fields(cls):
        default = f.default_factory() if f.default is MISSING else f.default
        if f.name in skip:
            continue
        if is_dataclass(default):
            add_dataclass_args(parser, type(default), skip, defaults)
            continue
        flag, meta = "--" + f.name.replace("_", "-"), f.metadata
        shown = default if defaults else argparse.SUPPRESS
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=shown, help=meta["help"])
        else:
            if meta.get("type"):
                kind = meta["type"]
            elif isinstance(default, list | tuple):
                kind = type(default[0]) if default else str
            else:
                kind = type(default)
            parser.add_argument(flag, type=kind, nargs=meta.get("nargs"), choices=meta.get("choices"), default=shown, help=meta["help"])


def dataclass_from_args(cls, args: argparse.Namespace, **fixed):
    """An instance of ``cls`` from parsed flags (add_dataclass_args), nested dataclasses
    included; tuple fields get tuples; ``fixed`` gives fields that have no flag."""
    values = dict(fixed)
    for f in fields(cls):
        default = f.default_factory() if f.default is MISSING else f.default
        if f.name in values:
            continue
        if is_dataclass(default):
            values[f.name] = dataclass_from_args(type(default), args)
        elif hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(default, tuple) else value
    return cls(**values)


def parse_config(description: str, argv: list[str] | None = None) -> tuple[Config, set[str]]:
    """main.py's command line: the Config, and the names of the flags given explicitly
    (whatever their value), which --resume and --init-from check against the checkpoint."""
    parsers = [argparse.ArgumentParser(description=description, formatter_class=HelpFormatter) for _ in range(2)]
    for parser, defaults in zip(parsers, (True, False)):
        add_dataclass_args(parser, Config, defaults=defaults)
    config = dataclass_from_args(Config, parsers[0].parse_args(argv))
    return config, set(vars(parsers[1].parse_args(argv)))


# settings a resumed run may change: where and how it runs, not what it trains
RUN_TIME_FIELDS = ("resume", "workers", "device", "out_dir", "run_name", "data", "unlabelled", "snapshot_minutes")


def resumed_config(saved: Config, asked: Config, given: set[str]) -> Config:
    """The checkpoint's configuration with the run-time settings given on the command line.

    A training setting given on the command line (``given``: the flags' field names) that
    differs from the checkpoint's (say another charset or image size) is an error naming
    each one, not a silent override; one given at the checkpoint's own value is fine.
    """
    theirs, ours = saved.flat(), asked.flat()
    changed = [
        f"--{name.replace('_', '-')} {ours[name]!r} (checkpoint: {theirs[name]!r})"
        for name in sorted(given)
        if name not in RUN_TIME_FIELDS and ours[name] != theirs[name]
    ]
    if changed:
        raise ValueError("--resume continues a run with its own settings; these differ: " + "; ".join(changed))
    return replace(saved, **{name: ours[name] for name in RUN_TIME_FIELDS if name in given})

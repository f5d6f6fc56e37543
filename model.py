"""CNNModel: an EfficientNet backbone read as a row of columns, and one head per character.

The backbone is efficientnet-pytorch's EfficientNet built from its own block list,
optionally cut after its first stages, with the later downsamplings vertical-only
(stride ``(2, 1)``): a 40x128 captcha keeps 16 columns of features instead of
EfficientNet's usual 4, more columns than characters. A bidirectional GRU gives each
column the context of its row (so "the third character" can be found), each character
position has its own learnt query that attends over the columns, and a classifier
shared by the positions turns each attended vector into logits over the charset plus
the end/pad class.
"""

import torch
from efficientnet_pytorch import EfficientNet
from efficientnet_pytorch.utils import Conv2dDynamicSamePadding, get_model_params
from torch import nn

from config import ModelConfig


def build_backbone(
    variant: str,
    width_strides: int,
    width_mult: float | None,
    depth_mult: float | None,
    drop_connect: float = 0.0,
    stages: int = 7,
    conv_head: bool = True,
) -> EfficientNet:
    """EfficientNet ``variant`` whose horizontal downsampling is ``2 ** width_strides``.

    Only the first ``stages`` of EfficientNet's 7 stages are built. EfficientNet
    downsamples 5 times (stem + 4 stages); the last ``5 - width_strides`` of those
    become vertical-only. ``width_mult`` / ``depth_mult`` override the
    variant's channel and depth coefficients when given; ``drop_connect`` is the
    stochastic-depth rate of the last block. Without ``conv_head`` the final 1x1
    convolution to 1280 channels (and its batch norm) is left out, so the features are
    the last stage's output through EfficientNet's SiLU.
    """
    # batch_norm_momentum 0.9 is PyTorch's usual 0.1 update; the TF-ported 0.99 lets the
    # running statistics lag ~100 steps behind fast-changing weights early in training.
    overrides = {"num_classes": 1, "include_top": False, "image_size": None, "drop_connect_rate": drop_connect, "batch_norm_momentum": 0.9}
    if width_mult is not None:
        overrides["width_coefficient"] = width_mult
    if depth_mult is not None:
        overrides["depth_coefficient"] = depth_mult
    blocks_args, global_params = get_model_params(variant, overrides)
    strided = [i for i, b in enumerate(blocks_args) if b.stride != [1]]
    vertical_only = set(strided[max(0, width_strides - 1) :])
    blocks_args = [b._replace(stride=[2, 1]) if i in vertical_only else b for i, b in enumerate(blocks_args)][:stages]
    backbone = EfficientNet(blocks_args, global_params)
    # The library's autograd.Function swish and its F.pad before every convolution cost
    # 20% and 10% of a CPU training step (bench/RESULTS.md); plain SiLU and the
    # convolutions' own symmetric padding give the same output sizes.
    backbone.set_swish(memory_efficient=False)
    _pad_inside_convolutions(backbone)
    if not conv_head:  # after 4 stages it took 38% of a CPU training step (bench/RESULTS.md)
        backbone._conv_head, backbone._bn1 = nn.Identity(), nn.Identity()
    return backbone


def _pad_inside_convolutions(module: nn.Module) -> None:
    """Replace each TF-style "same" convolution (an F.pad, then a convolution) in place by a
    plain nn.Conv2d padding k // 2 on every side; parameter names and shapes are unchanged."""
    for name, child in module.named_children():
        if isinstance(child, Conv2dDynamicSamePadding):
            conv = nn.Conv2d(
                child.in_channels, child.out_channels, child.kernel_size, child.stride,
                tuple(k // 2 for k in child.kernel_size), groups=child.groups, bias=child.bias is not None,
            )  # fmt: skip
            setattr(module, name, conv)
        else:
            _pad_inside_convolutions(child)


class CNNModel(nn.Module):
    """Captcha recognizer: images (B, C, H, W) -> logits (B, max_len, num_classes), built
    from its ModelConfig alone (``config.num_classes`` counts the end/pad class, index 0)."""

    temperature = 1.0  # confidences are softmax(logits / temperature); set from the checkpoint (calibration.py)
    feature_stats = None  # the training captchas' feature statistics (familiarity.py); set from the checkpoint

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        self.backbone = build_backbone(
            c.variant, c.width_strides, c.width_mult or None, c.depth_mult or None, c.drop_connect, c.stages, c.conv_head
        )
        if c.channels != 3:
            stem = self.backbone._conv_stem
            self.backbone._conv_stem = nn.Conv2d(c.channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False)
        with torch.no_grad():
            _, feat_channels, _, columns = self.backbone.extract_features(torch.zeros(1, c.channels, c.img_height, c.img_width)).shape
        dim, classes = c.head_dim, c.num_classes
        self.proj = nn.Linear(feat_channels, dim)
        self.column_pos = nn.Parameter(torch.randn(1, columns, dim) * 0.02)
        self.context = nn.GRU(dim, dim // 2, batch_first=True, bidirectional=True)
        self.ctc_classifier = nn.Linear(dim, classes)
        self.queries = nn.Parameter(torch.randn(1, c.max_len, dim) * 0.02)
        self.attend = nn.MultiheadAttention(dim, num_heads=4, dropout=c.dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(dim, classes))

    def backbone_modules(self) -> list[nn.Module]:
        """The modules the pretraining phase freezes."""
        return [self.backbone]

    def forward(self, images: torch.Tensor, with_ctc: bool = False, with_embedding: bool = False):
        """images (B, C, H, W) float, normalised -> logits (B, max_len, num_classes).

        With ``with_ctc`` also returns per-column logits (B, w, num_classes) for the
        auxiliary CTC loss (class 0 doubling as the blank), which teaches the columns
        where characters are far sooner than the position heads alone. With
        ``with_embedding`` (instead) the backbone's features averaged over the image
        (B, F): what familiarity.py compares with the training captchas'.
        """
        feats = self.backbone.extract_features(images)  # (B, F, h, w)
        columns = self.proj(feats.mean(dim=2).transpose(1, 2)) + self.column_pos  # (B, w, D)
        columns, _ = self.context(columns)  # (B, w, D): each column knows what lies left and right
        queries = self.queries.expand(images.shape[0], -1, -1)  # (B, max_len, D)
        attended, _ = self.attend(queries, columns, columns, need_weights=False)
        logits = self.classifier(self.norm(attended + queries))  # (B, max_len, num_classes)
        if with_ctc:
            return logits, self.ctc_classifier(columns)
        return (logits, feats.mean(dim=(2, 3))) if with_embedding else logits

"""LabelCodec: labels to fixed-length class-index tensors and back (the one module of the
label handling that needs torch, so the data scripts can do without it), and the answers a
reader may give: its alphabet and lengths."""

import copy
import dataclasses

import torch

from labels import label_problem


class LabelCodec:
    """Maps labels to fixed-length index tensors and back.

    Class 0 is the end/pad class; character ``charset[i]`` is class ``i + 1``.
    A label of length L encodes to ``[c_1, ..., c_L, 0, ..., 0]`` of length ``max_len``.
    """

    PAD = 0

    def __init__(self, charset: str, max_len: int, min_len: int = 1, ignore_case: bool = False):
        if len(set(charset)) != len(charset):
            raise ValueError(f"charset has repeated characters: {charset!r}")
        self.charset = charset
        self.max_len = max_len
        self.min_len = min_len  # predictions never end before it (predict.predict_batch)
        self.ignore_case = ignore_case  # labels are read and scored lower-cased
        self.index = {ch: i + 1 for i, ch in enumerate(charset)}
        self.answers: Answers | None = None  # a site's alphabet and lengths (constrained)

    @classmethod
    def for_model(cls, m) -> "LabelCodec":
        """The codec of a config.ModelConfig."""
        return cls(m.charset, m.max_len, m.min_len, m.ignore_case)

    def fold(self, label: str) -> str:
        """``label`` as this codec reads it: lower-cased for a case-insensitive model."""
        return label.lower() if self.ignore_case else label

    def constrained(self, allowed_chars: str = "", length: str = "") -> "LabelCodec":
        """A copy whose answers use only ``allowed_chars`` (all when empty) and have a
        length in ``length`` ("N" or "MIN-MAX"; the trained range when empty)."""
        out = copy.copy(self)
        out.answers = Answers.parse(self, allowed_chars, length) if allowed_chars or length else None
        return out

    @property
    def num_classes(self) -> int:
        return len(self.charset) + 1

    def encode(self, label: str) -> torch.Tensor:
        """``label`` (folded, see ``fold``) -> LongTensor of shape (max_len,)."""
        label = self.fold(label)
        problem = label_problem(label, self.charset, self.max_len)
        if problem is not None:
            raise ValueError(f"cannot encode {label!r}: {problem}")
        ids = [self.index[ch] for ch in label] + [self.PAD] * (self.max_len - len(label))
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids) -> str:
        """Class indices of shape (max_len,) -> label; reading stops at the first pad."""
        out = []
        for i in ids.tolist() if torch.is_tensor(ids) else ids:
            if i == self.PAD:
                break
            out.append(self.charset[i - 1])
        return "".join(out)


@dataclasses.dataclass(frozen=True)
class Answers:
    """The answers a site can show: which classes may be read, and the lengths allowed."""

    allowed: tuple[bool, ...]  # per class, the end/pad class first (always allowed)
    shortest: int
    longest: int

    @classmethod
    def parse(cls, codec: LabelCodec, allowed_chars: str, length: str) -> "Answers":
        """ValueError for characters the model cannot read or lengths it cannot give."""
        chars = codec.fold(allowed_chars) if allowed_chars else codec.charset
        unknown = sorted(set(chars) - set(codec.charset))
        if unknown:
            raise ValueError(f"--allowed-chars: the model cannot read {''.join(unknown)!r} (its charset: {codec.charset})")
        shortest, longest = codec.min_len, codec.max_len
        if length:
            try:
                low, _, high = length.partition("-")
                shortest, longest = int(low), int(high or low)
            except ValueError:
                raise ValueError(f"--length {length!r}: give N or MIN-MAX") from None
            if not 1 <= shortest <= longest <= codec.max_len:
                raise ValueError(f"--length {length!r}: lengths must lie in 1-{codec.max_len}, the longest this model reads")
        return cls((True, *(c in chars for c in codec.charset)), shortest, longest)

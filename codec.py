"""LabelCodec: labels to fixed-length class-index tensors and back (the one module of the
label handling that needs torch, so the data scripts can do without it)."""

import torch

from labels import label_problem


class LabelCodec:
    """Maps labels to fixed-length index tensors and back.

    Class 0 is the end/pad class; character ``charset[i]`` is class ``i + 1``.
    A label of length L encodes to ``[c_1, ..., c_L, 0, ..., 0]`` of length ``max_len``.
    """

    PAD = 0

    def __init__(self, charset: str, max_len: int, min_len: int = 1):
        if len(set(charset)) != len(charset):
            raise ValueError(f"charset has repeated characters: {charset!r}")
        self.charset = charset
        self.max_len = max_len
        self.min_len = min_len  # predictions never end before it (predict.predict_batch)
        self.index = {ch: i + 1 for i, ch in enumerate(charset)}

    @property
    def num_classes(self) -> int:
        return len(self.charset) + 1

    def encode(self, label: str) -> torch.Tensor:
        """``label`` -> LongTensor of shape (max_len,)."""
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

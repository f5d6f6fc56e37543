import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from codec import LabelCodec
from labels import DEFAULT_CHARSET, label_problem, parse_label, split_of


@pytest.mark.parametrize(
    "text, label",
    [
        ("The text in this image is 'aB3xY9'", "aB3xY9"),
        ("aB3xY9", "aB3xY9"),
        ("  aB3xY9 \n", "aB3xY9"),
        ("no quotes here", "no quotes here"),
        ("It's 'Xy12' here", "s "),
        ("'first' and 'second'", "first"),
        ("unmatched 'quote", "unmatched 'quote"),
        ("''", ""),
        (None, ""),
    ],
)
def test_parse_label(text, label):
    assert parse_label(text) == label


@given(st.text())
def test_parse_label_never_raises(text):
    assert isinstance(parse_label(text), str)


@given(st.text(alphabet=DEFAULT_CHARSET, min_size=1, max_size=8))
def test_codec_round_trip(label):
    codec = LabelCodec(DEFAULT_CHARSET, 8)
    ids = codec.encode(label)
    assert ids.shape == (8,) and ids.dtype == torch.long
    assert codec.decode(ids) == label


def test_codec_pads_with_end_class_and_counts_it():
    codec = LabelCodec("ab", 4)
    assert codec.num_classes == 3
    assert codec.encode("ba").tolist() == [2, 1, 0, 0]
    assert codec.decode(torch.tensor([1, 0, 2, 2])) == "a"


@pytest.mark.parametrize("label, problem", [("", "empty"), ("abcde", "too_long"), ("ab?", "bad_chars"), ("abcd", None)])
def test_label_problem(label, problem):
    assert label_problem(label, "abcd", 4) == problem
    if problem:
        with pytest.raises(ValueError, match=problem):
            LabelCodec("abcd", 4).encode(label)


def test_codec_rejects_repeated_charset():
    with pytest.raises(ValueError):
        LabelCodec("aab", 4)


def test_split_is_a_function_of_the_bytes_and_follows_ratios():
    blobs = [i.to_bytes(4, "big") for i in range(3000)]
    splits = [split_of(b, (0.8, 0.1, 0.1)) for b in blobs]
    assert splits == [split_of(b, (0.8, 0.1, 0.1)) for b in blobs]
    assert 0.75 < splits.count("train") / 3000 < 0.85
    assert splits.count("val") > 200 and splits.count("test") > 200

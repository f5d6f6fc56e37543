"""Semi-supervised training: the EMA teacher, pseudo-labels, the strong view, unlabelled sources."""

import dataclasses
import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from checkpoints import load_checkpoint
from codec import LabelCodec
from config import Config
from data_loader import load_data
from labels import parse_label
from train import IGNORE, Interrupted, make_teacher, pseudo_labels, recognition_loss, train_model
from unlabelled import UnlabelledDataset, UnlabelledImages


def loaders_for(config):
    return load_data(config, LabelCodec(config.model.charset, config.model.max_len))


class FixedTeacher(torch.nn.Module):
    """Answers every image with the same logits (N, max_len, K)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, images):
        return self.logits[: len(images)]


def test_sequence_gate_learns_whole_answers_above_the_threshold_ended_like_labels():
    sure, unsure, empty = torch.full((3, 5), -9.0), torch.full((3, 5), -9.0), torch.full((3, 5), -9.0)
    sure[0, 1], sure[1, 2], sure[2, 0] = 9.0, 9.0, 9.0  # "ab" then end: confidence ~1
    unsure[0, 1], unsure[0, 2], unsure[1, 0], unsure[2, 0] = 0.5, 0.4, 9.0, 9.0  # first position split: ~0.52
    empty[:, 0] = 9.0  # ends at once
    after_end = torch.full((3, 5), -9.0)
    after_end[0, 1], after_end[1, 0], after_end[2, 3] = 9.0, 9.0, 9.0  # "a", end, "c": what follows the end is dropped
    teacher = FixedTeacher(torch.stack([sure, unsure, empty, after_end]))
    classes, learn = pseudo_labels(teacher, torch.zeros(4, 3, 8, 8), threshold=0.9, gate="sequence")
    assert learn.all(1).tolist() == [True, False, False, True]
    assert classes[0].tolist() == [1, 2, 0] and classes[3].tolist() == [1, 0, 0]
    _, everything = pseudo_labels(teacher, torch.zeros(4, 3, 8, 8), threshold=0.0, gate="sequence")
    assert everything.any(1).tolist() == [True, True, False, True]  # an empty answer is never learnt


def test_character_gate_learns_each_sure_position_and_masks_the_rest_out_of_the_loss():
    logits = torch.full((1, 3, 5), -9.0)
    logits[0, 0, 1], logits[0, 1, 2], logits[0, 1, 3], logits[0, 2, 0] = 9.0, 0.5, 0.4, 9.0  # "a", b-or-c, end
    classes, learn = pseudo_labels(FixedTeacher(logits), torch.zeros(1, 3, 8, 8), threshold=0.9)
    assert classes[0].tolist() == [1, 2, 0] and learn[0].tolist() == [True, False, True]
    config = dataclasses.replace(Config(), ctc_weight=0.5, label_smoothing=0.0)
    target = classes.masked_fill(~learn, IGNORE)
    other = classes.clone()
    other[0, 1] = 4  # a different answer at the position left out changes nothing
    net_logits = torch.randn(1, 3, 5)
    ctc = torch.randn(1, 6, 5)
    loss = recognition_loss(net_logits, ctc, target, config)
    assert torch.isclose(loss, recognition_loss(net_logits, ctc, other.masked_fill(~learn, IGNORE), config))
    assert torch.isclose(loss, F.cross_entropy(net_logits[0, [0, 2]], classes[0, [0, 2]]))  # no CTC on a partial answer


def test_a_teacher_trained_with_label_smoothing_can_pass_the_threshold():
    """Smoothing 0.05 over 5 classes trains each position towards 0.96 at most: 3 positions
    at that ceiling are a sure answer (0.88 raw), not one below a 0.95 threshold."""
    smoothed = torch.log(torch.tensor([[0.01, 0.96, 0.01, 0.01, 0.01], [0.01, 0.01, 0.96, 0.01, 0.01], [0.96, 0.01, 0.01, 0.01, 0.01]]))
    teacher = FixedTeacher(smoothed.unsqueeze(0))
    for gate in ("sequence", "character"):
        assert not pseudo_labels(teacher, torch.zeros(1, 3, 8, 8), threshold=0.97, gate=gate)[1].any()
        assert pseudo_labels(teacher, torch.zeros(1, 3, 8, 8), threshold=0.97, smoothing=0.05, gate=gate)[1].all()


def test_the_teacher_is_an_exponential_moving_average_of_the_weights():
    model = torch.nn.Linear(3, 2)
    teacher = make_teacher(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    teacher.update_parameters(model)  # the first update copies (torch's AveragedModel starts from the model)
    with torch.no_grad():
        model.weight.add_(1.0)
    teacher.update_parameters(model)
    assert torch.allclose(teacher.module.weight, 0.9 * (start + 1) + 0.1 * (start + 2))
    assert not teacher.training


def test_the_strong_view_changes_pixels_but_never_the_label(tiny_parquet, tiny_config):
    dataset = UnlabelledDataset(UnlabelledImages([str(tiny_parquet)]), tiny_config)
    torch.manual_seed(0)
    weak, strong, labels, bad = dataset.__getitems__(list(range(16)))
    assert bad == 0 and weak.shape == strong.shape == (16, 3, 32, 96)
    changed = (weak - strong).abs().flatten(1).mean(1) > 0.01  # RandAugment may draw identity twice: rarely unchanged
    assert changed.sum() >= 14
    truth = [parse_label(t) for t in pq.read_table(tiny_parquet, columns=["text"])["text"].to_pylist()[:16]]
    assert labels == truth


def _png(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (60, 20), colour).save(buf, "PNG")
    return buf.getvalue()


def test_an_unlabelled_folder_with_broken_files_is_read_and_the_broken_counted(tiny_config, tmp_path):
    folder = tmp_path / "site"
    folder.mkdir()
    for name, colour in (("a.png", "white"), ("b.png", "gray"), ("c.PNG", "black")):
        (folder / name).write_bytes(_png(colour))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")
    images = UnlabelledImages([str(folder)])
    assert len(images) == 4 and images.labels == [None] * 4
    weak, strong, labels, bad = UnlabelledDataset(images, tiny_config).__getitems__([0, 1, 2, 3])
    assert bad == 1 and len(weak) == len(strong) == 3 and labels == [None] * 3
    with pytest.raises(FileNotFoundError, match="no images"):
        UnlabelledImages([str(tmp_path / "empty")])


def test_an_epoch_line_shows_what_passed_and_how_often_it_was_right(tiny_config, tiny_parquet, capsys):
    config = dataclasses.replace(tiny_config, unlabelled=[str(tiny_parquet)], threshold=0.0, mu=1)
    run = train_model(config, loaders_for(config))
    row = load_checkpoint(run / "last.pt")["history"][-1]
    assert 0 <= row["unlabelled_passed"] <= 1 and "teacher_val_seq_acc" in row
    assert "unlabelled positions passed" in capsys.readouterr().out
    assert "ema" in load_checkpoint(run / "last.pt")


@pytest.mark.parametrize("stop", ["epoch", "step"])
def test_resume_continues_identically_with_unlabelled_data(tiny_config, tiny_parquet, stop):
    base = dataclasses.replace(tiny_config, unlabelled=[str(tiny_parquet)], threshold=0.0, mu=1, epochs=2)
    straight = dataclasses.replace(base, run_name="straight")
    run = train_model(straight, loaders_for(straight))
    interrupted = dataclasses.replace(base, run_name="interrupted")
    with pytest.raises(Interrupted) as stopped:
        train_model(interrupted, loaders_for(interrupted), **({"stop_after_epochs": 1} if stop == "epoch" else {"stop_after_steps": 2}))
    resumed = dataclasses.replace(interrupted, resume=str(stopped.value.checkpoint))
    train_model(resumed, loaders_for(resumed))
    a, b = load_checkpoint(run / "last.pt"), load_checkpoint(stopped.value.checkpoint)
    assert [dict(h, img_per_s=0) for h in a["history"]] == [dict(h, img_per_s=0) for h in b["history"]]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for name, tensor in a["ema"].items():
        assert torch.equal(tensor, b["ema"][name]), name
    assert np.isclose(a["best_metric"], b["best_metric"])

import dataclasses
import time
from pathlib import Path

import pytest
import torch

import train
from checkpoints import load_checkpoint, load_pretrained_backbone
from codec import LabelCodec
from config import ModelConfig
from data_loader import load_data
from model import CNNModel
from schedule import one_cycle, optimizer_and_schedule, replan, steps_that_fit
from train import Interrupted, train_model
from utils import load_model, seed_everything, set_requires_grad


def loaders_for(config):
    return load_data(config, LabelCodec(config.model.charset, config.model.max_len))


def test_model_output_shape():
    model = CNNModel(ModelConfig(charset="abcdef", max_len=5, img_height=32, img_width=96, width_mult=0.25, depth_mult=0.25, head_dim=32))
    assert model(torch.randn(3, 3, 32, 96)).shape == (3, 5, 7)


def test_grayscale_model_output_shape():
    model = CNNModel(ModelConfig(charset="abc", max_len=3, img_height=32, img_width=64, channels=1, width_mult=0.25, depth_mult=0.25))
    assert model(torch.randn(2, 1, 32, 64)).shape == (2, 3, 4)


def test_few_steps_write_checkpoints_metrics_and_plot(tiny_config):
    run = train_model(tiny_config, loaders_for(tiny_config))
    for name in ("best.pt", "last.pt", "metrics.csv", "curves.png"):
        assert (run / name).exists(), name
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["charset"] == "abc123" and len(ckpt["history"]) == 2
    assert {"model", "optimizer", "scheduler", "config", "best_metric"} <= set(ckpt)
    assert (run / "metrics.csv").read_text().count("\n") == 3
    assert not list(run.glob("*.tmp"))


def test_checkpoint_round_trip_rebuilds_the_same_model(tiny_config):
    run = train_model(tiny_config, loaders_for(tiny_config))
    model, codec, config, _ = load_model(run / "last.pt")
    state = load_checkpoint(run / "last.pt")["model"]
    assert config == dataclasses.replace(tiny_config, resume="", model=dataclasses.replace(tiny_config.model, min_len=2))
    assert codec.charset == "abc123"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    newest, *_ = load_model(out_dir=tiny_config.out_dir)
    assert newest.state_dict().keys() == state.keys()


def test_checkpoint_from_before_conv_head_setting_loads_with_the_head(tiny_config, tmp_path):
    with_head = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, conv_head=True))
    run = train_model(with_head, loaders_for(with_head))
    ckpt = load_checkpoint(run / "last.pt")
    del ckpt["config"]["model"]["conv_head"]  # as written before the setting existed
    torch.save(ckpt, tmp_path / "old.pt")
    model, _, config, _ = load_model(tmp_path / "old.pt")
    assert config.model.conv_head and isinstance(model.backbone._conv_head, torch.nn.Conv2d)
    assert not any(name.startswith("backbone._conv_head") for name in CNNModel(tiny_config.model).state_dict())


def test_resume_between_epochs_continues_identically(tiny_config):
    straight = dataclasses.replace(tiny_config, epochs=3, run_name="straight")
    run = train_model(straight, loaders_for(straight))
    interrupted = dataclasses.replace(straight, run_name="interrupted")
    with pytest.raises(Interrupted) as stopped:
        train_model(interrupted, loaders_for(interrupted), stop_after_epochs=1)
    part = stopped.value.checkpoint.parent
    assert load_checkpoint(part / "last.pt")["epoch"] == 0 and "partial" not in load_checkpoint(part / "last.pt")
    resumed = dataclasses.replace(interrupted, resume=str(part / "last.pt"))
    train_model(resumed, loaders_for(resumed))
    a, b = load_checkpoint(run / "last.pt"), load_checkpoint(part / "last.pt")
    assert [dict(h, img_per_s=0) for h in a["history"]] == [dict(h, img_per_s=0) for h in b["history"]]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


@pytest.mark.parametrize(
    ("done", "seconds_left", "expected"),
    [
        (0, 100.0, 70),  # 70 steps and the validations at steps 30, 60 and 70: 70 + 3 x 10 s
        (60, 50.0, 90),  # 30 steps and one validation; any step past 90 brings a second one
        (60, 5.0, 60),  # not even one validation fits: stop where the run is
        (0, 1000.0, 750),  # 25 epochs of 30 steps and their 25 validations: one step more brings a 26th
    ],
)
def test_steps_that_fit_count_each_epochs_validation(done, seconds_left, expected):
    assert steps_that_fit(done, seconds_left, per_step=1.0, per_validation=10.0, steps_per_epoch=30) == expected


def test_replanning_continues_the_shorter_cycle_where_the_run_stands(tiny_config):
    optimizer, scheduler = optimizer_and_schedule(torch.nn.Linear(2, 2), tiny_config, total_steps=100)
    for _ in range(20):
        optimizer.step()
        scheduler.step()
    assert replan(tiny_config, optimizer, scheduler, 100) is scheduler
    shorter = replan(tiny_config, optimizer, scheduler, 40)
    assert shorter.total_steps == 40 and shorter.last_epoch == 20
    reference_optimizer, _ = optimizer_and_schedule(torch.nn.Linear(2, 2), tiny_config, total_steps=1)
    reference = one_cycle(reference_optimizer, tiny_config, 40)
    for _ in range(20):
        reference_optimizer.step()
        reference.step()
    assert shorter.get_last_lr() == pytest.approx(reference.get_last_lr())  # the 40-step cycle's rate at step 20
    assert optimizer.param_groups[0]["betas"] == pytest.approx(reference_optimizer.param_groups[0]["betas"])


def test_a_run_past_its_time_limit_stops_at_the_timed_steps(tiny_config, monkeypatch):
    """A run whose limit has passed when steps 1-3 are timed ends there, in its first epoch."""
    monkeypatch.setattr(train, "BUDGET_TIMING", (1, 3))
    config = dataclasses.replace(tiny_config, epochs=3, time_limit=1.0)
    run = train_model(config, loaders_for(config), started=time.perf_counter() - 60.0)
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["scheduler"]["total_steps"] == ckpt["scheduler"]["last_epoch"] == 3
    assert ckpt["epoch"] == 0 and len(ckpt["history"]) == 1


def test_a_run_fitted_to_its_time_limit_resumes_with_the_same_plan(tiny_config, monkeypatch):
    """The plan (here: 4 steps of 3 epochs x 3) is made by the first process and kept in the
    checkpoints; the resumed run continues it without planning again."""
    monkeypatch.setattr(train, "BUDGET_TIMING", (1, 3))
    monkeypatch.setattr(train, "steps_that_fit", lambda done, *_: 4)
    straight = dataclasses.replace(tiny_config, epochs=3, run_name="straight")
    run = train_model(straight, loaders_for(straight))
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 1 and len(ckpt["history"]) == 2 and ckpt["scheduler"]["total_steps"] == 4
    assert ckpt["scheduler"]["last_epoch"] == 4  # the shortened cycle ran to its end
    interrupted = dataclasses.replace(straight, run_name="interrupted")
    with pytest.raises(Interrupted) as stopped:
        train_model(interrupted, loaders_for(interrupted), stop_after_epochs=1)
    monkeypatch.setattr(train, "steps_that_fit", lambda done, *_: 9)  # a resumed run must not plan again
    resumed = dataclasses.replace(interrupted, resume=str(stopped.value.checkpoint))
    train_model(resumed, loaders_for(resumed))
    other = load_checkpoint(stopped.value.checkpoint)
    assert [dict(h, img_per_s=0) for h in ckpt["history"]] == [dict(h, img_per_s=0) for h in other["history"]]
    for name, tensor in ckpt["model"].items():
        assert torch.equal(tensor, other["model"][name]), name


def test_pretraining_freezes_backbone_weights_and_batchnorm_stats(tiny_config):
    config = dataclasses.replace(tiny_config, epochs=1, pretrain_epochs=1)
    seed_everything(config.seed)
    before = CNNModel(config.model).state_dict()
    run = train_model(config, loaders_for(config))
    after = load_checkpoint(run / "last.pt")["model"]
    backbone = [k for k in before if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone)
    for k in backbone:
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["queries"], after["queries"])


def test_set_requires_grad():
    model = CNNModel(ModelConfig(charset="ab", max_len=2, img_height=32, img_width=64, width_mult=0.25, depth_mult=0.25))
    set_requires_grad(model.backbone, False)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())


class Payload:
    """Unpickling this would run code; weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": Payload()}, path)
    with pytest.raises(ValueError, match="not a safe captcha checkpoint"):
        load_checkpoint(path)
    assert "pickled code ran" not in capsys.readouterr().out


def test_pretrained_weights_load_where_names_and_shapes_match(tiny_config, tmp_path):
    source = CNNModel(tiny_config.model).backbone.state_dict()
    source["_conv_head.weight"] = torch.zeros(3, 3)  # a stage this model does not have
    torch.save(source, tmp_path / "imagenet.pt")
    model = CNNModel(tiny_config.model)
    assert load_pretrained_backbone(model, str(tmp_path / "imagenet.pt")) == len(source) - 1
    assert torch.equal(model.backbone._conv_stem.weight, source["_conv_stem.weight"])


FLAT_CONFIG_RUN = Path(__file__).parent / "fixtures" / "tiny_run_flat_config.pt"


def test_a_checkpoint_with_a_flat_config_loads_and_the_same_seed_retrains_its_weights(tiny_config):
    """fixtures/tiny_run_flat_config.pt is last.pt of this very run (tiny_config: seed 0, 2 epochs
    of 3 steps), written when the model's settings sat flat in the config dict, before the
    training loop moved into train.Trainer: it loads as it is, and training again gives its weights.
    (The tolerance allows float rounding on other CPUs; any change in what is drawn at random or
    in what a step does moves the weights by far more.)"""
    model, _, config, old = load_model(FLAT_CONFIG_RUN)
    assert "model" not in old["config"] and config.seed == tiny_config.seed
    assert config.model == dataclasses.replace(tiny_config.model, min_len=1)  # what every file from before min_len gets
    assert torch.equal(model.state_dict()["queries"], old["model"]["queries"])
    new = load_checkpoint(train_model(tiny_config, loaders_for(tiny_config)) / "last.pt")
    training = ("epoch", "train_loss", "train_seq_acc", "lr")  # validation now reads answers of at least min_len characters
    assert [{k: h[k] for k in training} for h in new["history"]] == [{k: h[k] for k in training} for h in old["history"]]
    for name, tensor in old["model"].items():
        assert torch.allclose(new["model"][name].float(), tensor.float(), rtol=0, atol=1e-5), name

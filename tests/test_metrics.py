import pytest

from metrics import accuracy_by_length, calibration, character_confusions, coverage_at_thresholds, full_report, sequence_metrics


def test_sequence_accuracy_and_cer_by_hand():
    m = sequence_metrics(["abc", "abd", "ab"], ["abc", "abc", "abc"])
    assert m["seq_acc"] == pytest.approx(1 / 3)
    assert m["cer"] == pytest.approx(2 / 9)  # one substitution + one deletion over 9 reference characters


def test_case_insensitive_counts_case_errors_as_right():
    preds, labels = ["ABc", "xY"], ["abc", "xy"]
    assert sequence_metrics(preds, labels)["seq_acc"] == 0.0
    assert sequence_metrics(preds, labels)["cer"] == pytest.approx(3 / 5)
    assert sequence_metrics(preds, labels, ignore_case=True) == {"seq_acc": 1.0, "cer": 0.0, "n": 2}


def test_empty_prediction_is_all_deletions_and_length_mismatch_is_insertion():
    assert sequence_metrics([""], ["abcd"])["cer"] == pytest.approx(1.0)
    assert sequence_metrics(["abcde"], ["abcd"])["cer"] == pytest.approx(0.25)


def test_accuracy_by_length():
    out = accuracy_by_length(["ab", "ab", "abcd"], ["ab", "ac", "abcd"])
    assert out == {2: {"n": 2, "seq_acc": 0.5}, 4: {"n": 1, "seq_acc": 1.0}}


def test_confusions_come_from_substitutions_only():
    pairs = character_confusions(["aXc", "abcd", "aO1", "", "ab"], ["abc", "abc", "a01", "zz", "ab"])
    assert pairs == {("b", "X"): 1, ("0", "O"): 1}


def test_coverage_at_thresholds():
    rows = coverage_at_thresholds(["a", "b", "c", "d"], ["a", "x", "c", "d"], [0.99, 0.95, 0.6, 0.3], thresholds=(0.0, 0.5, 0.9, 0.999))
    assert [(r["coverage"], r["seq_acc"]) for r in rows] == [(1.0, 0.75), (0.75, pytest.approx(2 / 3)), (0.5, 0.5), (0.0, None)]


def test_full_report_has_every_section():
    report = full_report(["ab"], ["ab"], [0.9])
    assert set(report) == {"case_sensitive", "case_insensitive", "by_length", "top_confusions", "coverage", "calibration"}


def test_calibration_error_by_hand():
    # bin 0.9-1.0: confidences 0.95, 0.95, right 1 of 2 -> gap 0.45, weight 1/2; bin 0.2-0.3: 0.25, 0.25, right 0 -> gap 0.25
    out = calibration(["a", "x", "x", "x"], ["a", "a", "a", "a"], [0.95, 0.95, 0.25, 0.25])
    assert out["mean_confidence"] == pytest.approx(0.6)
    assert out["ece"] == pytest.approx(0.5 * 0.45 + 0.5 * 0.25)
    assert calibration(["a", "x"], ["a", "a"], [1.0, 0.0])["ece"] == 0.0  # 1.0 falls in the top bin

"""Every metric of kdlab.eval against values computed by hand on tiny tensors (four rows, two classes)."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.eval import (
    classification_metrics,
    confusion_matrix,
    expected_calibration_error,
    fidelity,
    full_evaluation,
    reliability_curve,
)

# Student probabilities (confidences 0.75, 0.78, 0.65, 0.90: bins 11, 11, 9, 13 of 15, far from the edges),
# labels (rows 1, 3, 4 correct, row 2 wrong) and a teacher that agrees on rows 1, 3, 4.
STUDENT = torch.tensor([[0.75, 0.25], [0.22, 0.78], [0.35, 0.65], [0.90, 0.10]], dtype=torch.float64)
LABELS = torch.tensor([0, 0, 1, 0])
TEACHER = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.3, 0.7], [0.6, 0.4]], dtype=torch.float64)


def test_accuracy_nll_ece_agreement_and_kl_by_hand():
    # softmax(log p) = p, so log-probabilities serve as logits
    m = classification_metrics(STUDENT.log(), LABELS, TEACHER.log())
    assert m["accuracy"] == pytest.approx(0.75, abs=1e-12)
    # NLL = -(ln .75 + ln .22 + ln .65 + ln .90) / 4
    assert m["nll"] == pytest.approx(0.5844883092079592, abs=1e-12)
    # ECE = 2/4 |0.5 - 0.765| + 1/4 |1 - 0.65| + 1/4 |1 - 0.9| = 0.1325 + 0.0875 + 0.025
    assert m["ece"] == pytest.approx(0.245, abs=1e-12)
    # teacher argmax 0, 0, 1, 0 vs student argmax 0, 1, 1, 0
    assert m["agreement"] == pytest.approx(0.75, abs=1e-12)
    # KL per row: .5 ln(.5/.75) + .5 ln(.5/.25) = 0.143841; .9 ln(.9/.22) + .1 ln(.1/.78) = 1.062478;
    # .3 ln(.3/.35) + .7 ln(.7/.65) = 0.005630; .6 ln(.6/.9) + .4 ln(.4/.1) = 0.311239; mean 0.380797
    assert m["kl_teacher"] == pytest.approx(0.3807970535683939, abs=1e-12)


def test_ece_function_and_bin_edges():
    assert expected_calibration_error(STUDENT, LABELS) == pytest.approx(0.245, abs=1e-12)
    # 4 bins: confidence exactly 0.5 falls in (0.25, 0.5], i.e. bin 1, and 1.0 in the last bin
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    curve = reliability_curve(probs, torch.tensor([1, 0]), n_bins=4)
    assert curve["count"] == [0, 1, 0, 1]
    # ECE = 1/2 |0 - 0.5| + 1/2 |1 - 1| = 0.25
    assert expected_calibration_error(probs, torch.tensor([1, 0]), n_bins=4) == pytest.approx(0.25)


def test_reliability_curve_by_hand():
    curve = reliability_curve(STUDENT, LABELS, n_bins=15)
    assert curve["count"] == [0] * 9 + [1, 0, 2, 0, 1, 0]
    assert curve["lower"][9] == pytest.approx(9 / 15) and curve["upper"][9] == pytest.approx(10 / 15)
    assert curve["confidence"][9] == pytest.approx(0.65) and curve["accuracy"][9] == pytest.approx(1.0)
    assert curve["confidence"][11] == pytest.approx(0.765) and curve["accuracy"][11] == pytest.approx(0.5)
    assert curve["confidence"][13] == pytest.approx(0.90) and curve["accuracy"][13] == pytest.approx(1.0)
    assert all(math.isnan(curve["confidence"][b]) for b in (0, 10, 12, 14))
    # the ECE is the count-weighted gap of the curve
    ece = sum(
        n / 4 * abs(a - c) for c, a, n in zip(curve["confidence"], curve["accuracy"], curve["count"], strict=True) if n
    )
    assert ece == pytest.approx(0.245, abs=1e-12)


def test_fidelity_with_a_zero_probability_teacher_class():
    teacher = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    student = torch.tensor([[0.25, 0.75], [0.8, 0.2]], dtype=torch.float64)
    out = fidelity(student.log(), teacher)
    # row 1: the tie goes to class 0 (argmax returns the first), student says 1 -> disagree; row 2 agrees
    assert out["agreement"] == pytest.approx(0.5)
    # (.5 ln 2 + .5 ln(2/3) + ln(1/.8)) / 2; the 0 · log 0 term counts 0
    assert out["kl"] == pytest.approx(0.1834922937700501, abs=1e-12)


def test_confusion_matrix_by_hand():
    rows, cols = torch.tensor([0, 1, 1, 2, 2]), torch.tensor([0, 2, 1, 2, 2])
    assert confusion_matrix(rows, cols, 3) == [[1, 0, 0], [0, 1, 1], [0, 0, 2]]


def test_full_evaluation_collects_everything():
    out = full_evaluation(STUDENT.log(), LABELS, TEACHER.log(), proxy_probs=TEACHER, proxy_temperature=1.0)
    assert out["teacher_accuracy"] == pytest.approx(1.0)  # teacher argmax 0, 0, 1, 0 = the labels
    assert out["confusion_labels"] == [[2, 1], [0, 1]]  # true label rows, student prediction columns
    assert out["confusion_teacher"] == [[2, 1], [0, 1]]
    # the proxy teacher at eps = 0 is the teacher itself: its fidelity equals the teacher's
    assert out["proxy_agreement"] == pytest.approx(out["agreement"], abs=1e-12)
    assert out["kl_proxy"] == pytest.approx(0.3807970535683939, abs=1e-12)
    assert out["reliability"]["count"][11] == 2 and sum(out["teacher_reliability"]["count"]) == 4


def test_full_evaluation_proxy_uses_the_students_tempered_distribution():
    # at T = 2 the student distribution compared with the proxy is softmax(logits / 2)
    logits = torch.tensor([[math.log(9.0), 0.0]], dtype=torch.float64)  # softmax(logits / 2) = [.75, .25]
    proxy = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    out = full_evaluation(logits, torch.tensor([0]), proxy_probs=proxy, proxy_temperature=2.0)
    assert out["kl_proxy"] == pytest.approx(0.14384103622589042, abs=1e-12)  # .5 ln(.5/.75) + .5 ln(.5/.25)


def test_metrics_are_float64_even_from_float32_logits():
    logits = torch.tensor([[20.0, 0.0, 0.0]], dtype=torch.float32)  # float32 softmax would round 1 - p to 0
    m = classification_metrics(logits, torch.tensor([0]))
    assert m["nll"] == pytest.approx(math.log1p(2 * math.exp(-20.0)), rel=1e-9)

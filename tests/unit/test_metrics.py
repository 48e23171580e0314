from __future__ import annotations

import math

import pytest

from model_core.metrics import summarise

NAN = math.nan


def test_metrics_of_a_known_matrix() -> None:
    r = [
        [0.9, NAN, NAN],
        [0.6, 0.8, NAN],
        [0.5, 0.7, 1.0],
    ]
    m = summarise(r)
    assert m.average_accuracy == pytest.approx((0.5 + 0.7 + 1.0) / 3)
    assert m.bwt == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    assert m.forgetting == pytest.approx([0.4, 0.1])


def test_forgetting_uses_the_best_earlier_accuracy() -> None:
    m = summarise([[0.5, NAN, NAN], [0.9, 0.8, NAN], [0.6, 0.8, 1.0]])
    assert m.forgetting == pytest.approx([0.3, 0.0])


def test_no_forgetting_gives_zero_bwt() -> None:
    m = summarise([[1.0, NAN], [1.0, 1.0]])
    assert m.bwt == 0.0 and m.forgetting == [0.0] and m.average_accuracy == 1.0


def test_matrix_must_be_square() -> None:
    with pytest.raises(ValueError):
        summarise([[1.0, 0.5]])

"""What a job reads per task stays linear in the classes learnt: the calibrations fit on a bounded subsample."""

from __future__ import annotations

import numpy as np

from service.jobs.training import CALIBRATION_SAMPLES, calibration_rows


def test_the_calibrations_fit_on_the_whole_suite_up_to_the_cap_and_a_seeded_subsample_beyond() -> None:
    assert calibration_rows(10).tolist() == list(range(10))
    assert len(calibration_rows(CALIBRATION_SAMPLES)) == CALIBRATION_SAMPLES
    big = calibration_rows(5 * CALIBRATION_SAMPLES)
    assert len(big) == CALIBRATION_SAMPLES and len(np.unique(big)) == CALIBRATION_SAMPLES
    assert np.all(np.diff(big) > 0) and big.max() < 5 * CALIBRATION_SAMPLES  # sorted rows of the suite
    assert np.array_equal(big, calibration_rows(5 * CALIBRATION_SAMPLES))  # the same rows every time
    # spread over the whole suite (the newest tasks' samples come last), not its first rows
    assert big.min() < CALIBRATION_SAMPLES and big.max() > 4 * CALIBRATION_SAMPLES

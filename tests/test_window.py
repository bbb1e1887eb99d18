"""The window sizer: records queued per worker from the handler's recent pace."""

from __future__ import annotations

import pytest

from streamworker.supervisor.window import FIRST_WINDOW, LEAST_WINDOW, SMOOTHING_RECORDS, WindowSizer


def test_it_starts_shallow_until_a_duration_is_known() -> None:
    assert WindowSizer(most=4096, seconds=0.1).window == FIRST_WINDOW
    assert WindowSizer(most=3, seconds=0.1).window == 3


@pytest.mark.parametrize(
    ("seconds_per_record", "window"),
    [(2e-6, 4096), (0.001, 100), (0.005, 20), (1.0, LEAST_WINDOW), (0.0, 4096)],
)
def test_it_holds_about_the_target_time_of_work(seconds_per_record: float, window: int) -> None:
    sizer = WindowSizer(most=4096, seconds=0.1)
    sizer.observe(1000, 1000 * seconds_per_record)
    assert sizer.window == window


def test_a_window_smaller_than_the_least_is_kept() -> None:
    sizer = WindowSizer(most=1, seconds=0.1)
    sizer.observe(1, 5.0)
    assert sizer.window == 1


def test_a_batch_moves_the_estimate_by_its_share_of_records() -> None:
    sizer = WindowSizer(most=4096, seconds=0.1)
    sizer.observe(1000, 1.0)  # 1 ms each
    sizer.observe(1, 0.5)  # one call of 500 ms moves it by 1/33 of the difference
    assert sizer.seconds_per_record == pytest.approx(0.001 + 0.499 / (1 + SMOOTHING_RECORDS))
    assert sizer.window == 6
    sizer.observe(1000, 0.005)  # a run of a thousand quick calls mostly replaces it
    assert sizer.window >= 150


def test_results_without_records_change_nothing() -> None:
    sizer = WindowSizer(most=4096, seconds=0.1)
    sizer.observe(0, 0.0)
    assert sizer.window == FIRST_WINDOW and sizer.seconds_per_record is None

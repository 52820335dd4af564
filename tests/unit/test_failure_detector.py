"""The phi-accrual failure detector, with a fake clock."""

import math

import pytest

from fabric.cluster.failure_detector import PHI_THRESHOLD, PhiAccrual, for_settings, phi_of, z_of


def test_phi_is_minus_log10_of_the_normal_tail():
    assert phi_of(0.0, 0.0, 1.0) == pytest.approx(math.log10(2))  # half the intervals are longer than the mean
    assert phi_of(-5.0, 0.0, 1.0) == pytest.approx(0.0, abs=1e-6)
    assert phi_of(50.0, 0.0, 1.0) == math.inf  # beyond what a float tail holds
    assert phi_of(z_of(PHI_THRESHOLD), 0.0, 1.0) == pytest.approx(PHI_THRESHOLD)
    assert z_of(8.0) == pytest.approx(5.612, abs=1e-3)


@pytest.mark.parametrize(("interval_s", "liveness_s"), [(1.0, 3.0), (0.2, 1.0), (0.1, 0.5), (1.0, 1.2)])
def test_the_defaults_declare_a_regular_sender_dead_liveness_s_after_its_last_heartbeat(interval_s, liveness_s):
    settings = for_settings(interval_s, liveness_s)
    detector = PhiAccrual(settings, now=0.0)
    for i in range(1, 50):
        detector.heard(i * interval_s)
    last = 49 * interval_s
    expected = max(liveness_s, interval_s + settings.z * settings.min_std_s)  # no negative pause
    assert detector.deadline() - last == pytest.approx(expected)
    assert detector.phi(detector.deadline()) == pytest.approx(PHI_THRESHOLD)
    assert detector.phi(last + interval_s) < 1.0


def test_the_first_heartbeat_alone_gives_liveness_s():
    detector = PhiAccrual(for_settings(1.0, 3.0), now=7.0)
    assert detector.deadline() == pytest.approx(10.0)


def test_irregular_arrivals_widen_the_deadline_up_to_the_std_cap():
    settings = for_settings(1.0, 3.0)
    detector, t = PhiAccrual(settings, now=0.0), 0.0
    for i in range(200):
        t += (0.1, 10.0)[i % 2]  # chaotic: std far above the cap
        detector.heard(t)
    assert detector.std_s == settings.max_std_s
    assert detector.deadline() - t == pytest.approx(detector.mean_s + settings.pause_s + settings.z * 1.0)


def test_the_window_forgets_old_intervals():
    detector = PhiAccrual(for_settings(1.0, 3.0), now=0.0)
    t = 0.0
    for _ in range(100):
        t += 5.0
        detector.heard(t)
    for _ in range(100):
        t += 1.0
        detector.heard(t)
    assert detector.mean_s == pytest.approx(1.0) and detector.std_s == pytest.approx(0.1)


def test_a_heartbeat_dated_before_the_last_counts_as_no_interval():
    detector = PhiAccrual(for_settings(1.0, 3.0), now=5.0)
    detector.heard(4.0)
    assert detector.last == 5.0 and detector.intervals[-1] == 0.0

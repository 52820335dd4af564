"""Phi-accrual failure detection: how suspicious a node's silence is, given its history.

Used by :class:`~fabric.cluster.membership.Membership` (a client's view of its
nodes, a node's view of its peers), one :class:`PhiAccrual` per node heard.
A fixed cut (declare a node dead after 3 s of silence) takes a live node whose
machine is busy for a dead one: when 32 nodes share 2 cores their heartbeats
arrive late and irregularly, and every late one was a false death.  The
accrual detector of Hayashibara et al., as Cassandra and Akka use it, learns
each node's arrival intervals instead and says how unlikely the silence so far
is::

    heartbeat ─► heard(now): the interval since the last one joins the window
    silence   ─► phi(now) = -log10 P(an interval at least this long)
                 the node is declared dead when phi >= threshold,
                 i.e. at deadline() = last + mean + pause + z(threshold) * std

The intervals are taken as normally distributed with the window's mean and
standard deviation, the deviation kept between ``min_std_s`` (a perfectly
regular sender must still be allowed some jitter) and ``max_std_s`` (so a
node with a chaotic history is still declared dead within a bounded time),
and with ``pause_s`` added to the mean: the silence accepted beyond a usual
interval.  Defaults (:func:`for_settings`) are chosen so that on an idle
cluster, whose heartbeats are regular, the deadline is ``liveness_s`` after
the last heartbeat, as the fixed cut was; a node whose heartbeats jitter gets
as much more as its jitter asks for, up to ``z * max_std_s`` more.

Pure: the time is an argument, so unit tests drive it with a fake clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

# Akka's default threshold: P(a live node's interval this long) = 1e-8 under the model.
PHI_THRESHOLD = 8.0
WINDOW = 100  # intervals remembered per node (Akka keeps 1,000; 100 s of history is plenty at 1 s beats)
MIN_STD_FRACTION = 0.1  # min_std_s as a fraction of the heartbeat interval (Akka: 100 ms at 1 s)
MAX_STD_FRACTION = 1.0  # max_std_s likewise: detection is at most z * (max - min) std later than liveness_s


def phi_of(elapsed_s: float, mean_s: float, std_s: float) -> float:
    """-log10 of the probability that an interval exceeds ``elapsed_s`` (normal model)."""
    tail = 0.5 * math.erfc((elapsed_s - mean_s) / (std_s * math.sqrt(2.0)))
    return math.inf if tail <= 0.0 else -math.log10(tail)


def z_of(threshold: float) -> float:
    """The number of standard deviations past the mean at which phi reaches ``threshold``."""
    low, high = -10.0, 40.0
    for _ in range(100):  # bisection: phi_of is increasing in its first argument
        mid = (low + high) / 2
        low, high = (mid, high) if phi_of(mid, 0.0, 1.0) < threshold else (low, mid)
    return high


@dataclass(frozen=True)
class DetectorSettings:
    """Parameters of every :class:`PhiAccrual` of one membership."""

    interval_s: float  # the expected heartbeat interval, before any is measured
    pause_s: float  # silence accepted beyond a usual interval
    min_std_s: float
    max_std_s: float
    z: float  # standard deviations past the mean where phi reaches its threshold (z_of(threshold))


def for_settings(heartbeat_interval_s: float, liveness_s: float, threshold: float = PHI_THRESHOLD) -> DetectorSettings:
    """Settings under which a node with perfectly regular heartbeats is declared
    dead ``liveness_s`` after its last one (the fixed cut's behaviour on an idle
    cluster: a crash is seen in ~``liveness_s``), and an irregular one later."""
    min_std_s = heartbeat_interval_s * MIN_STD_FRACTION
    z = z_of(threshold)
    pause_s = max(0.0, liveness_s - heartbeat_interval_s - z * min_std_s)
    return DetectorSettings(heartbeat_interval_s, pause_s, min_std_s, heartbeat_interval_s * MAX_STD_FRACTION, z)


class PhiAccrual:
    """The arrival history of one node's heartbeats."""

    def __init__(self, settings: DetectorSettings, now: float) -> None:
        """Starts as if one interval of ``settings.interval_s`` had been seen,
        with ``now`` as the last arrival."""
        self.settings = settings
        self.last = now
        self.intervals: deque[float] = deque([settings.interval_s], maxlen=WINDOW)
        self._sum = settings.interval_s
        self._sum_sq = settings.interval_s ** 2

    def heard(self, now: float) -> None:
        """A heartbeat arrived at ``now``."""
        interval = max(0.0, now - self.last)
        self.last = max(self.last, now)
        if len(self.intervals) == self.intervals.maxlen:
            oldest = self.intervals[0]
            self._sum -= oldest
            self._sum_sq -= oldest * oldest
        self.intervals.append(interval)
        self._sum += interval
        self._sum_sq += interval * interval

    def excuse(self, seconds: float) -> None:
        """Do not count the last ``seconds`` as silence: the observer could not ask
        (its own thread was stalled), so the node could not answer."""
        self.last += seconds

    @property
    def mean_s(self) -> float:
        return self._sum / len(self.intervals)

    @property
    def std_s(self) -> float:
        """The window's standard deviation, kept within the settings' bounds."""
        variance = max(0.0, self._sum_sq / len(self.intervals) - self.mean_s ** 2)
        return min(max(math.sqrt(variance), self.settings.min_std_s), self.settings.max_std_s)

    def phi(self, now: float) -> float:
        """How suspicious the silence since the last heartbeat is (0: not at all)."""
        return phi_of(now - self.last, self.mean_s + self.settings.pause_s, self.std_s)

    def deadline(self) -> float:
        """When phi reaches the threshold if nothing is heard meanwhile."""
        return self.last + self.mean_s + self.settings.pause_s + self.settings.z * self.std_s

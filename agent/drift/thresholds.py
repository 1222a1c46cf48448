"""Alarm thresholds: one frozen configuration for the detector."""

from __future__ import annotations

from dataclasses import dataclass

from edgefleet.agent.drift.errors import DriftConfigError


@dataclass(frozen=True)
class DriftThresholds:
    """When a window counts as drifted, clear, or too small to say.

    Attributes:
        alpha: probability that one window of undrifted data is called drifted, for the
            whole model (split evenly, Bonferroni, over columns × 4 tests). The default
            5e-6 keeps false alarms under 1% per device-day of 1,440 windows with
            ``k_on = 1``.
        alpha_clear: the looser level that defines the lower ("clear") threshold used to
            switch an alarm off: every statistic must be below its critical value at
            this level.
        min_n: a column with fewer finite values in the window is not tested.
        psi_min, ks_min: effect-size floors, so huge merged windows do not alarm on
            negligible drift (PSI unitless, KS in CDF units).
        mean_shift_min: floor on |mean shift| in reference standard deviations.
        log_var_min: floor on |ln(variance ratio)|.
        k_on: consecutive drifted windows that switch the alarm on.
        k_off: consecutive clear windows that switch it off.
    """

    alpha: float = 5e-6
    alpha_clear: float = 0.05
    min_n: int = 200
    psi_min: float = 0.02
    ks_min: float = 0.02
    mean_shift_min: float = 0.05
    log_var_min: float = 0.05
    k_on: int = 1
    k_off: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.alpha < self.alpha_clear < 1:
            raise DriftConfigError("need 0 < alpha < alpha_clear < 1")
        if self.min_n < 2:
            raise DriftConfigError("min_n must be at least 2")
        floors = (self.psi_min, self.ks_min, self.mean_shift_min, self.log_var_min)
        if min(floors) < 0:
            raise DriftConfigError("effect floors must be non-negative")
        if self.k_on < 1 or self.k_off < 1:
            raise DriftConfigError("k_on and k_off must be at least 1")

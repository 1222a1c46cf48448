"""Rollout policy: state and observations in, one decision out.

This module does no I/O and never reads the clock: the caller passes ``now``. It judges
the current wave's gates (:func:`evaluate_gates`) and turns them, the bake time and the
extension limit into an :class:`~edgefleet.fleet_server.rollouts.model.Decision`
(:func:`decide`). The service stores the state and carries the decision out.

Rules the property tests hold it to: it never skips a wave, never advances or completes
with a failed gate, never advances on missing data unless an operator promoted the wave,
and answers WAIT/EXTEND only before the wave's deadline (bake time + longest extension),
so every rollout reaches a final decision in bounded time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from edgefleet.fleet_server.rollouts.model import (
    Action,
    Decision,
    FailurePolicy,
    GateResult,
    GateStatus,
    GateThresholds,
    Observations,
    RolloutState,
    RolloutStatus,
)

#: Gate names, in the order :func:`evaluate_gates` reports them.
GATE_NAMES: tuple[str, ...] = (
    "install_failure_rate",
    "devices_lost",
    "latency_p95_ratio",
    "output_psi",
    "output_js",
    "input_psi",
    "accuracy_drop",
    "shadow_agreement",
)
#: Gates whose FAIL acts at once, even during the bake time.
DECISIVE_GATES: frozenset[str] = frozenset({"install_failure_rate", "devices_lost"})


def _num(x: float) -> str:
    """A short human rendering of a measured value (keeps small values readable)."""
    if not math.isfinite(x):
        return str(x)
    if x == 0 or abs(x) >= 0.01:
        return f"{x:,.2f}"
    return f"{x:.2g}"


def _pct(x: float) -> str:
    return f"{x:.1%}" if math.isfinite(x) else str(x)


def _gate(
    name: str, status: GateStatus, value: float | None, threshold: float | None, detail: str
) -> GateResult:
    return GateResult(name=name, status=status, value=value, threshold=threshold, detail=detail)


def _non_finite(name: str, label: str, value: float | None, threshold: float | None) -> GateResult:
    """A FAIL for a measurement or threshold that is NaN or infinite (never a silent pass)."""
    return _gate(
        name,
        GateStatus.FAIL,
        value,
        threshold,
        f"{label} is not a finite number (value {value}, threshold {threshold}): "
        "refusing to pass on invalid data",
    )


def _finite(*xs: float | None) -> bool:
    return all(x is None or math.isfinite(x) for x in xs)


def _install_gate(obs: Observations, t: GateThresholds, required: bool) -> GateResult:
    name, limit = "install_failure_rate", t.max_install_failure_rate
    if limit is None:
        return _gate(name, GateStatus.SKIPPED, None, None, "install failure gate is off")
    if not _finite(limit, t.min_reported_rate):
        return _non_finite(
            name, f"install thresholds (min reported rate {t.min_reported_rate})", None, limit
        )
    n = obs.wave_devices
    if n <= 0:
        status = GateStatus.INSUFFICIENT if required else GateStatus.SKIPPED
        return _gate(name, status, None, limit, "no devices counted in this wave yet")
    rate = obs.failed / n
    if rate > limit:
        return _gate(
            name,
            GateStatus.FAIL,
            rate,
            limit,
            f"install failures {obs.failed:,} of {n:,} devices ({_pct(rate)}) > {_pct(limit)}",
        )
    reported = obs.installed + obs.failed
    if reported / n < t.min_reported_rate:
        return _gate(
            name,
            GateStatus.INSUFFICIENT,
            rate,
            limit,
            f"only {reported:,} of {n:,} devices reported an install "
            f"({_pct(reported / n)} < {_pct(t.min_reported_rate)} needed)",
        )
    return _gate(
        name,
        GateStatus.PASS,
        rate,
        limit,
        f"install failures {obs.failed:,} of {n:,} devices ({_pct(rate)}) <= {_pct(limit)}",
    )


def _lost_gate(obs: Observations, t: GateThresholds, required: bool) -> GateResult:
    name, limit = "devices_lost", t.max_lost_rate
    if limit is None:
        return _gate(name, GateStatus.SKIPPED, None, None, "lost-device gate is off")
    if not _finite(limit):
        return _non_finite(name, "lost-device threshold", None, limit)
    n = obs.wave_devices
    if n <= 0:
        status = GateStatus.INSUFFICIENT if required else GateStatus.SKIPPED
        return _gate(name, status, None, limit, "no devices counted in this wave yet")
    rate = obs.lost / n
    sign, status = (">", GateStatus.FAIL) if rate > limit else ("<=", GateStatus.PASS)
    return _gate(
        name,
        status,
        rate,
        limit,
        f"{obs.lost:,} of {n:,} devices lost ({_pct(rate)}) {sign} {_pct(limit)}, "
        f"lost meaning no heartbeat for {t.lost_after_s:,.0f} s",
    )


def _latency_gate(obs: Observations, t: GateThresholds) -> GateResult:
    name, limit = "latency_p95_ratio", t.max_latency_p95_ratio
    new, old = obs.latency_p95_new_ms, obs.latency_p95_old_ms
    if limit is None:
        return _gate(name, GateStatus.SKIPPED, None, None, "latency gate is off")
    if new is None or old is None:
        return _gate(name, GateStatus.INSUFFICIENT, None, limit, "p95 latency missing on one side")
    if not _finite(new, old, limit):
        return _non_finite(name, f"p95 latency new {new} ms / old {old} ms", None, limit)
    if new < 0 or old < 0:
        return _gate(
            name,
            GateStatus.FAIL,
            None,
            limit,
            f"negative p95 latency (new {new} ms, old {old} ms): refusing to pass on invalid data",
        )
    if old == 0:
        return _gate(
            name, GateStatus.INSUFFICIENT, None, limit, "old version's p95 latency is 0 ms"
        )
    ratio = new / old
    sign, status = (">", GateStatus.FAIL) if ratio > limit else ("<=", GateStatus.PASS)
    return _gate(
        name,
        status,
        ratio,
        limit,
        f"p95 latency {_num(new)} ms new vs {_num(old)} ms old: ratio {_num(ratio)} "
        f"{sign} {_num(limit)}",
    )


def _drift_gate(
    name: str,
    label: str,
    value: float | None,
    limit: float | None,
    *,
    obs: Observations,
    t: GateThresholds,
    extra: str = "",
) -> GateResult:
    if limit is None:
        return _gate(name, GateStatus.SKIPPED, None, None, f"{label} gate is off")
    new, control = obs.predictions_new, obs.predictions_control
    over = f"over {new:,} new vs {control:,} control predictions"
    if new < t.min_predictions or control < t.min_predictions:
        return _gate(
            name,
            GateStatus.INSUFFICIENT,
            value,
            limit,
            f"{label} needs {t.min_predictions:,} predictions per side, have {new:,} new "
            f"vs {control:,} control",
        )
    if value is None:
        return _gate(name, GateStatus.INSUFFICIENT, None, limit, f"{label} not computed yet")
    if not _finite(value, limit):
        return _non_finite(name, label, value, limit)
    sign, status = (">", GateStatus.FAIL) if value > limit else ("<=", GateStatus.PASS)
    return _gate(
        name, status, value, limit, f"{label}{extra} {_num(value)} {sign} {_num(limit)} {over}"
    )


def _accuracy_gate(obs: Observations, t: GateThresholds) -> GateResult:
    name, limit = "accuracy_drop", t.max_accuracy_drop
    if limit is None:
        return _gate(name, GateStatus.SKIPPED, None, None, "accuracy gate is off")
    if obs.labels_new < t.min_labels or obs.labels_control < t.min_labels:
        return _gate(
            name,
            GateStatus.INSUFFICIENT,
            None,
            limit,
            f"accuracy needs {t.min_labels:,} labels per side, have {obs.labels_new:,} new "
            f"vs {obs.labels_control:,} control",
        )
    new, control = obs.accuracy_new, obs.accuracy_control
    if new is None or control is None:
        return _gate(name, GateStatus.INSUFFICIENT, None, limit, "accuracy not computed yet")
    if not _finite(new, control, limit):
        return _non_finite(name, f"accuracy new {new} / control {control}", None, limit)
    drop = control - new
    sign, status = (">", GateStatus.FAIL) if drop > limit else ("<=", GateStatus.PASS)
    return _gate(
        name,
        status,
        drop,
        limit,
        f"accuracy {_pct(new)} new vs {_pct(control)} control: drop {_pct(drop)} {sign} "
        f"{_pct(limit)} over {obs.labels_new:,} vs {obs.labels_control:,} labels",
    )


def _shadow_gate(obs: Observations, t: GateThresholds) -> GateResult:
    name, limit = "shadow_agreement", t.min_shadow_agreement
    if limit is None:
        return _gate(name, GateStatus.SKIPPED, None, None, "shadow gate is off")
    if not obs.shadow_enabled:
        return _gate(name, GateStatus.SKIPPED, None, limit, "shadow mode is not enabled")
    value = obs.shadow_agreement
    if obs.shadow_samples < t.min_shadow_samples or value is None:
        return _gate(
            name,
            GateStatus.INSUFFICIENT,
            value,
            limit,
            f"shadow agreement needs {t.min_shadow_samples:,} comparisons, have "
            f"{obs.shadow_samples:,}",
        )
    if not _finite(value, limit):
        return _non_finite(name, "shadow agreement", value, limit)
    sign, status = ("<", GateStatus.FAIL) if value < limit else (">=", GateStatus.PASS)
    return _gate(
        name,
        status,
        value,
        limit,
        f"shadow agreement {_pct(value)} {sign} {_pct(limit)} over "
        f"{obs.shadow_samples:,} comparisons",
    )


def evaluate_gates(
    obs: Observations, t: GateThresholds, *, wave_devices_required: bool = True
) -> tuple[GateResult, ...]:
    """Judge every gate on one set of observations, one result per name in ``GATE_NAMES``.

    A ``None`` threshold turns its gate off (SKIPPED). A NaN or infinite measurement or
    threshold is a FAIL, never a silent pass. ``wave_devices_required`` says what an
    observation without wave devices (``wave_devices == 0``) means for the install and
    lost-device gates: no data yet (INSUFFICIENT, the default) or not applicable (SKIPPED,
    for evaluations that have no wave of their own).
    """
    feature = f" (feature {obs.input_psi_feature})" if obs.input_psi_feature else ""
    return (
        _install_gate(obs, t, wave_devices_required),
        _lost_gate(obs, t, wave_devices_required),
        _latency_gate(obs, t),
        _drift_gate("output_psi", "output PSI", obs.output_psi, t.max_output_psi, obs=obs, t=t),
        _drift_gate(
            "output_js", "output JS divergence", obs.output_js, t.max_output_js, obs=obs, t=t
        ),
        _drift_gate(
            "input_psi",
            "input PSI",
            obs.input_psi_max,
            t.max_input_psi,
            obs=obs,
            t=t,
            extra=feature,
        ),
        _accuracy_gate(obs, t),
        _shadow_gate(obs, t),
    )


def _no_data_gates(t: GateThresholds) -> tuple[GateResult, ...]:
    """Every gate that is on is INSUFFICIENT: nothing was observed at all."""
    gates = []
    for g in evaluate_gates(Observations(), t):
        # Shadow mode is unknown without observations: a configured shadow gate waits.
        off = g.status is GateStatus.SKIPPED and g.threshold is None
        if off or g.status is GateStatus.FAIL:  # FAIL here means an invalid threshold
            gates.append(g)
        else:
            gates.append(
                _gate(g.name, GateStatus.INSUFFICIENT, None, g.threshold, "no observations yet")
            )
    return tuple(gates)


def _names(gates: Iterable[GateResult]) -> str:
    return ", ".join(g.name for g in gates)


def _details(gates: Iterable[GateResult]) -> str:
    return "; ".join(f"{g.name}: {g.detail}" for g in gates)


def _fail_action(state: RolloutState) -> Action:
    return Action.ROLLBACK if state.on_failure is FailurePolicy.ROLLBACK else Action.PAUSE


def _validate(state: RolloutState) -> None:
    if not state.waves or not 0 <= state.wave < len(state.waves):
        raise ValueError(
            f"rollout state is inconsistent: wave index {state.wave} outside "
            f"{len(state.waves)} waves"
        )


def decide(state: RolloutState, obs: Observations | None, now: float) -> Decision:
    """Decide what a rollout does on this tick.

    ``obs`` is ``None`` when nothing has been observed (every gate that is on counts as
    INSUFFICIENT). Order of rules: not running -> NONE; inside the bake time -> WAIT,
    unless an install-failure or lost-device gate already fails (a broken install does not
    wait out the bake time) or the wave was promoted; any failed gate -> PAUSE/ROLLBACK
    per ``state.on_failure``; missing data -> EXTEND until bake + ``max_extension_s``, then
    PAUSE/ROLLBACK (a promoted wave treats missing data as a pass); otherwise ADVANCE to
    the next wave, or COMPLETE after the last one.

    Raises:
        ValueError: ``state.wave`` does not index ``state.waves``.
    """
    if state.status is not RolloutStatus.RUNNING:
        return Decision(Action.NONE, f"rollout is {state.status.value}, not running")
    _validate(state)
    wave_label = f"wave {state.wave + 1} of {len(state.waves)}"
    fail_action = _fail_action(state)
    verb = "rolling back" if fail_action is Action.ROLLBACK else "pausing"
    bake_end = state.wave_started_at + state.bake_s
    deadline = bake_end + state.max_extension_s

    if now < bake_end and not state.promoted:
        if obs is not None:
            gates = evaluate_gates(obs, state.thresholds)
            decisive = [
                g for g in gates if g.name in DECISIVE_GATES and g.status is GateStatus.FAIL
            ]
            if decisive:
                return Decision(
                    fail_action,
                    f"{wave_label}: {_names(decisive)} failed during the bake time, {verb} "
                    f"at once: {_details(decisive)}",
                    gates,
                )
        return Decision(
            Action.WAIT, f"{wave_label}: baking, {bake_end - now:,.0f} s of bake time left"
        )

    gates = (
        evaluate_gates(obs, state.thresholds)
        if obs is not None
        else _no_data_gates(state.thresholds)
    )
    failed = [g for g in gates if g.status is GateStatus.FAIL]
    if failed:
        return Decision(
            fail_action, f"{wave_label}: {_names(failed)} failed, {verb}: {_details(failed)}", gates
        )
    missing = [g for g in gates if g.status is GateStatus.INSUFFICIENT]
    note = ""
    if missing:
        if state.promoted:
            note = (
                f" (promoted by an operator: {_names(missing)} lacked data and count as "
                "passed on the operator's call)"
            )
        elif now < deadline:
            return Decision(
                Action.EXTEND,
                f"{wave_label}: waiting for data on {_names(missing)}, up to "
                f"{deadline - now:,.0f} s more: {_details(missing)}",
                gates,
            )
        else:
            return Decision(
                fail_action,
                f"{wave_label}: not enough data after the longest extension on "
                f"{_names(missing)}, {verb}: {_details(missing)}",
                gates,
            )
    passed = "no gate failed" if missing else "every gate passed"
    if state.wave == len(state.waves) - 1:
        return Decision(Action.COMPLETE, f"{wave_label}: {passed}, rollout complete{note}", gates)
    return Decision(
        Action.ADVANCE,
        f"{wave_label}: {passed}, advancing to wave {state.wave + 2} "
        f"({state.waves[state.wave + 1]:,} devices in all){note}",
        gates,
        next_wave=state.wave + 1,
    )

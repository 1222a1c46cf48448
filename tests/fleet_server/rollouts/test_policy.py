"""Rollout policy: gate examples, decision examples and property tests of the driver loop."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

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
from edgefleet.fleet_server.rollouts.policy import GATE_NAMES, decide, evaluate_gates

T0 = 1_000_000.0
PASS, FAIL = GateStatus.PASS, GateStatus.FAIL
INSUFFICIENT, SKIPPED = GateStatus.INSUFFICIENT, GateStatus.SKIPPED

#: Observations that pass every default gate.
GOOD = Observations(
    wave_devices=10,
    installed=10,
    latency_p95_new_ms=12.0,
    latency_p95_old_ms=10.0,
    predictions_new=1_234,
    predictions_control=5_678,
    output_psi=0.05,
    output_js=0.02,
    input_psi_max=0.1,
    input_psi_feature="temperature",
    labels_new=150,
    labels_control=400,
    accuracy_new=0.91,
    accuracy_control=0.92,
    shadow_enabled=True,
    shadow_samples=300,
    shadow_agreement=0.95,
)


def state(**changes: Any) -> RolloutState:
    base = RolloutState(
        status=RolloutStatus.RUNNING,
        waves=(1, 10, 50, 100),
        wave=0,
        wave_started_at=T0,
        bake_s=600.0,
        max_extension_s=3600.0,
    )
    return dataclasses.replace(base, **changes)


def gate(obs: Observations, name: str, t: GateThresholds | None = None) -> GateResult:
    gates = evaluate_gates(obs, t or GateThresholds())
    return next(g for g in gates if g.name == name)


def obs(**changes: Any) -> Observations:
    return dataclasses.replace(GOOD, **changes)


# --- gates: examples --------------------------------------------------------------------


def test_good_observations_pass_every_gate_in_order() -> None:
    gates = evaluate_gates(GOOD, GateThresholds())
    assert (
        tuple(g.name for g in gates)
        == GATE_NAMES
        == (
            "install_failure_rate",
            "devices_lost",
            "latency_p95_ratio",
            "output_psi",
            "output_js",
            "input_psi",
            "accuracy_drop",
            "shadow_agreement",
        )
    )
    assert all(g.status is PASS for g in gates), gates
    assert all(g.detail for g in gates)


@pytest.mark.parametrize(
    ("name", "changes", "thresholds", "status", "detail"),
    [
        # install failures: decisive even before everyone reported
        ("install_failure_rate", {"installed": 3, "failed": 1}, {}, FAIL, "1 of 10 devices"),
        (
            "install_failure_rate",
            {"installed": 8, "failed": 1},
            {"max_install_failure_rate": 0.2},
            INSUFFICIENT,
            "only 9 of 10 devices reported",
        ),
        (
            "install_failure_rate",
            {"installed": 8, "failed": 1},
            {"max_install_failure_rate": 0.2, "min_reported_rate": 0.9},
            PASS,
            "10.0%",
        ),
        (
            "install_failure_rate",
            {"installed": 8, "failed": 2},
            {"max_install_failure_rate": 0.2},
            PASS,
            "2 of 10",
        ),
        (
            "install_failure_rate",
            {"installed": 7, "failed": 3},
            {"max_install_failure_rate": 0.2},
            FAIL,
            "(30.0%) > 20.0%",
        ),
        ("install_failure_rate", {"wave_devices": 0, "installed": 0}, {}, INSUFFICIENT, "no dev"),
        ("install_failure_rate", {}, {"max_install_failure_rate": None}, SKIPPED, "off"),
        ("install_failure_rate", {}, {"max_install_failure_rate": math.nan}, FAIL, "finite"),
        # lost devices
        ("devices_lost", {"lost": 2}, {}, PASS, "2 of 10 devices lost"),
        ("devices_lost", {"lost": 3}, {}, FAIL, "(30.0%) > 20.0%"),
        ("devices_lost", {"wave_devices": 0}, {}, INSUFFICIENT, "no devices"),
        ("devices_lost", {"lost": 9}, {"max_lost_rate": None}, SKIPPED, "off"),
        # latency
        ("latency_p95_ratio", {"latency_p95_new_ms": 15.0}, {}, PASS, "ratio 1.50 <= 1.50"),
        ("latency_p95_ratio", {"latency_p95_new_ms": 16.0}, {}, FAIL, "ratio 1.60 > 1.50"),
        ("latency_p95_ratio", {"latency_p95_new_ms": None}, {}, INSUFFICIENT, "missing"),
        ("latency_p95_ratio", {"latency_p95_old_ms": None}, {}, INSUFFICIENT, "missing"),
        ("latency_p95_ratio", {"latency_p95_old_ms": 0.0}, {}, INSUFFICIENT, "0 ms"),
        ("latency_p95_ratio", {"latency_p95_new_ms": math.nan}, {}, FAIL, "not a finite"),
        ("latency_p95_ratio", {"latency_p95_old_ms": math.inf}, {}, FAIL, "not a finite"),
        ("latency_p95_ratio", {"latency_p95_new_ms": -1.0}, {}, FAIL, "negative p95"),
        ("latency_p95_ratio", {}, {"max_latency_p95_ratio": None}, SKIPPED, "off"),
        # output PSI / JS, input PSI
        (
            "output_psi",
            {"output_psi": 0.41},
            {},
            FAIL,
            "output PSI 0.41 > 0.20 over 1,234 new vs 5,678 control predictions",
        ),
        ("output_psi", {"output_psi": 0.2}, {}, PASS, "0.20 <= 0.20"),
        ("output_psi", {"predictions_new": 199}, {}, INSUFFICIENT, "have 199 new"),
        ("output_psi", {"predictions_control": 10}, {}, INSUFFICIENT, "10 control"),
        ("output_psi", {"output_psi": None}, {}, INSUFFICIENT, "not computed"),
        ("output_psi", {"output_psi": math.nan}, {}, FAIL, "not a finite"),
        ("output_psi", {"output_psi": 5.0}, {"max_output_psi": None}, SKIPPED, "off"),
        ("output_js", {"output_js": 0.15}, {}, FAIL, "output JS divergence 0.15 > 0.10"),
        ("output_js", {"output_js": math.inf}, {}, FAIL, "not a finite"),
        ("output_js", {"predictions_new": 0}, {}, INSUFFICIENT, "200 predictions per side"),
        ("input_psi", {"input_psi_max": 0.3}, {}, FAIL, "(feature temperature) 0.30 > 0.25"),
        ("input_psi", {"input_psi_max": None}, {}, INSUFFICIENT, "not computed"),
        ("input_psi", {"input_psi_max": 0.001}, {}, PASS, "0.001 <= 0.25"),
        # accuracy
        ("accuracy_drop", {"accuracy_new": 0.89}, {}, FAIL, "drop 3.0% > 2.0%"),
        ("accuracy_drop", {"accuracy_new": 0.95}, {}, PASS, "drop -3.0% <= 2.0%"),
        ("accuracy_drop", {"labels_new": 99}, {}, INSUFFICIENT, "have 99 new"),
        ("accuracy_drop", {"labels_control": 0}, {}, INSUFFICIENT, "0 control"),
        ("accuracy_drop", {"accuracy_control": None}, {}, INSUFFICIENT, "not computed"),
        ("accuracy_drop", {"accuracy_new": math.nan}, {}, FAIL, "not a finite"),
        ("accuracy_drop", {"labels_new": 0}, {"max_accuracy_drop": None}, SKIPPED, "off"),
        # shadow
        ("shadow_agreement", {"shadow_agreement": 0.85}, {}, FAIL, "85.0% < 90.0%"),
        ("shadow_agreement", {"shadow_agreement": 0.9}, {}, PASS, "90.0% >= 90.0%"),
        ("shadow_agreement", {"shadow_samples": 50}, {}, INSUFFICIENT, "have 50"),
        ("shadow_agreement", {"shadow_agreement": None}, {}, INSUFFICIENT, "100 comparisons"),
        ("shadow_agreement", {"shadow_enabled": False, "shadow_samples": 0}, {}, SKIPPED, "not en"),
        ("shadow_agreement", {"shadow_agreement": math.nan}, {}, FAIL, "not a finite"),
        ("shadow_agreement", {}, {"min_shadow_agreement": None}, SKIPPED, "off"),
    ],
)
def test_gate_examples(
    name: str,
    changes: dict[str, Any],
    thresholds: dict[str, Any],
    status: GateStatus,
    detail: str,
) -> None:
    result = gate(obs(**changes), name, GateThresholds(**thresholds))
    assert result.status is status, result
    assert detail in result.detail, result.detail


def test_gate_values_and_thresholds() -> None:
    t = GateThresholds()
    gates = {g.name: g for g in evaluate_gates(obs(failed=0, lost=1), t)}
    assert gates["devices_lost"].value == pytest.approx(0.1)
    assert gates["devices_lost"].threshold == t.max_lost_rate
    assert gates["latency_p95_ratio"].value == pytest.approx(1.2)
    assert gates["accuracy_drop"].value == pytest.approx(0.01)
    assert gates["shadow_agreement"].value == 0.95
    assert gates["shadow_agreement"].threshold == 0.9


def test_wave_devices_not_required() -> None:
    gates = evaluate_gates(Observations(), GateThresholds(), wave_devices_required=False)
    assert [g.status for g in gates[:2]] == [SKIPPED, SKIPPED]
    gates = evaluate_gates(obs(failed=5), GateThresholds(), wave_devices_required=False)
    assert gates[0].status is FAIL  # only an empty wave is affected


# --- decide: examples -------------------------------------------------------------------


def test_not_running_does_nothing() -> None:
    for status in (RolloutStatus.PAUSED, RolloutStatus.COMPLETED, RolloutStatus.ABORTED):
        d = decide(state(status=status), GOOD, T0 + 10_000)
        assert d.action is Action.NONE
        assert status.value in d.reason


def test_waits_out_the_bake_time() -> None:
    d = decide(state(), GOOD, T0 + 599)
    assert d.action is Action.WAIT
    assert d.gates == ()
    assert "bake" in d.reason
    assert decide(state(), None, T0).action is Action.WAIT
    # A drift failure does not cut the bake time short: it may be noise until then.
    assert decide(state(), obs(output_psi=0.9), T0 + 1).action is Action.WAIT


@pytest.mark.parametrize("changes", [{"failed": 1, "installed": 0}, {"lost": 5}])
@pytest.mark.parametrize(
    ("policy", "action"),
    [(FailurePolicy.PAUSE, Action.PAUSE), (FailurePolicy.ROLLBACK, Action.ROLLBACK)],
)
def test_broken_install_acts_during_bake(
    changes: dict[str, int], policy: FailurePolicy, action: Action
) -> None:
    d = decide(state(on_failure=policy), obs(**changes), T0 + 5)
    assert d.action is action
    assert "during the bake time" in d.reason
    assert len(d.gates) == len(GATE_NAMES)


def test_advance_after_bake() -> None:
    d = decide(state(), GOOD, T0 + 600)
    assert d.action is Action.ADVANCE
    assert d.next_wave == 1
    assert "wave 1 of 4" in d.reason and "advancing to wave 2 (10 devices in all)" in d.reason
    assert len(d.gates) == len(GATE_NAMES)


def test_complete_after_last_wave() -> None:
    d = decide(state(wave=3), GOOD, T0 + 600)
    assert d.action is Action.COMPLETE
    assert d.next_wave is None


@pytest.mark.parametrize(
    ("policy", "action"),
    [(FailurePolicy.PAUSE, Action.PAUSE), (FailurePolicy.ROLLBACK, Action.ROLLBACK)],
)
def test_failed_gate_after_bake(policy: FailurePolicy, action: Action) -> None:
    d = decide(state(on_failure=policy), obs(output_psi=0.41, accuracy_new=0.5), T0 + 600)
    assert d.action is action
    assert "output_psi, accuracy_drop failed" in d.reason
    assert "0.41 > 0.20" in d.reason


def test_missing_data_extends_then_gives_up() -> None:
    thin = obs(labels_new=3)
    d = decide(state(), thin, T0 + 600)
    assert d.action is Action.EXTEND
    assert "accuracy_drop" in d.reason
    assert decide(state(), thin, T0 + 600 + 3599).action is Action.EXTEND
    d = decide(state(), thin, T0 + 600 + 3600)
    assert d.action is Action.PAUSE
    assert "not enough data after the longest extension" in d.reason
    assert "accuracy_drop" in d.reason
    d = decide(state(on_failure=FailurePolicy.ROLLBACK), thin, T0 + 10**6)
    assert d.action is Action.ROLLBACK


def test_no_observations_at_all() -> None:
    d = decide(state(), None, T0 + 700)
    assert d.action is Action.EXTEND
    assert all(g.status is INSUFFICIENT for g in d.gates)
    assert decide(state(), None, T0 + 5000).action is Action.PAUSE
    # Gates that are off stay SKIPPED; with every gate off there is nothing to wait for.
    off = GateThresholds(
        max_install_failure_rate=None,
        max_lost_rate=None,
        max_latency_p95_ratio=None,
        max_output_psi=None,
        max_output_js=None,
        max_input_psi=None,
        max_accuracy_drop=None,
        min_shadow_agreement=None,
    )
    d = decide(state(thresholds=off), None, T0 + 700)
    assert d.action is Action.ADVANCE
    assert all(g.status is SKIPPED for g in d.gates)


def test_promotion_skips_bake_and_accepts_missing_data_not_failures() -> None:
    d = decide(state(promoted=True), obs(labels_new=0), T0 + 1)
    assert d.action is Action.ADVANCE
    assert "promoted by an operator" in d.reason and "accuracy_drop" in d.reason
    d = decide(state(promoted=True), obs(output_psi=0.9), T0 + 1)
    assert d.action is Action.PAUSE


def test_inconsistent_state_is_an_error() -> None:
    with pytest.raises(ValueError, match="wave index 4 outside 4 waves"):
        decide(state(wave=4), GOOD, T0 + 600)
    with pytest.raises(ValueError, match="wave index"):
        decide(state(waves=()), GOOD, T0 + 600)


# --- properties -------------------------------------------------------------------------

WEIRD = st.sampled_from([math.nan, math.inf, -math.inf, -1.0])
ratio = st.one_of(st.none(), st.floats(0.0, 1.0), WEIRD)
positive = st.one_of(st.none(), st.floats(0.0, 50.0), WEIRD)


@st.composite
def observations(draw: st.DrawFn) -> Observations:
    n = draw(st.integers(0, 20))
    installed = draw(st.integers(0, n))
    failed = draw(st.one_of(st.just(0), st.integers(0, n - installed)))
    return Observations(
        wave_devices=n,
        installed=installed,
        failed=failed,
        lost=draw(st.one_of(st.just(0), st.integers(0, n))),
        latency_p95_new_ms=draw(positive),
        latency_p95_old_ms=draw(positive),
        predictions_new=draw(st.integers(0, 400)),
        predictions_control=draw(st.integers(0, 400)),
        output_psi=draw(ratio),
        output_js=draw(ratio),
        input_psi_max=draw(ratio),
        labels_new=draw(st.integers(0, 200)),
        labels_control=draw(st.integers(0, 200)),
        accuracy_new=draw(ratio),
        accuracy_control=draw(ratio),
        shadow_enabled=draw(st.booleans()),
        shadow_samples=draw(st.integers(0, 200)),
        shadow_agreement=draw(ratio),
    )


def maybe(values: st.SearchStrategy[float]) -> st.SearchStrategy[float | None]:
    return st.one_of(st.none(), values)


thresholds = st.builds(
    GateThresholds,
    max_install_failure_rate=maybe(st.floats(0.0, 0.5)),
    max_lost_rate=maybe(st.floats(0.0, 0.5)),
    min_reported_rate=st.floats(0.0, 1.0),
    max_latency_p95_ratio=maybe(st.floats(0.5, 3.0)),
    max_output_psi=maybe(st.floats(0.0, 1.0)),
    max_output_js=maybe(st.floats(0.0, 1.0)),
    max_input_psi=maybe(st.floats(0.0, 1.0)),
    min_predictions=st.integers(0, 300),
    max_accuracy_drop=maybe(st.floats(0.0, 0.5)),
    min_labels=st.integers(0, 150),
    min_shadow_agreement=maybe(st.floats(0.0, 1.0)),
    min_shadow_samples=st.integers(0, 150),
)


@settings(max_examples=150, deadline=None)
@given(observations(), thresholds, st.booleans())
def test_gates_never_pass_silently(o: Observations, t: GateThresholds, required: bool) -> None:
    gates = evaluate_gates(o, t, wave_devices_required=required)
    assert tuple(g.name for g in gates) == GATE_NAMES
    for g in gates:
        assert g.detail
        if g.status is PASS:
            assert g.value is not None and math.isfinite(g.value)
            assert g.threshold is not None and math.isfinite(g.threshold)
            if g.name == "shadow_agreement":
                assert g.value >= g.threshold
            else:
                assert g.value <= g.threshold
        if g.threshold is None:
            assert g.status is SKIPPED
    # A non-finite measurement of an enabled, sufficiently fed gate is never a pass.
    by_name = {g.name: g for g in gates}
    measured = {
        "output_psi": o.output_psi,
        "output_js": o.output_js,
        "input_psi": o.input_psi_max,
        "latency_p95_ratio": o.latency_p95_new_ms,
        "accuracy_drop": o.accuracy_new,
        "shadow_agreement": o.shadow_agreement,
    }
    for name, value in measured.items():
        if value is not None and not math.isfinite(value):
            assert by_name[name].status is not PASS


TERMINAL = {Action.PAUSE, Action.ROLLBACK, Action.COMPLETE}


def check_decision(d: Decision, s: RolloutState, now: float) -> None:
    """The invariants every single decision of a running rollout keeps."""
    assert d.action is not Action.NONE
    assert d.reason
    failed = [g for g in d.gates if g.status is FAIL]
    missing = [g for g in d.gates if g.status is INSUFFICIENT]
    if d.action is Action.ADVANCE:
        assert d.next_wave == s.wave + 1 < len(s.waves)  # never skips a wave
    else:
        assert d.next_wave is None
    if d.action is Action.COMPLETE:
        assert s.wave == len(s.waves) - 1
    if d.action in (Action.ADVANCE, Action.COMPLETE):
        assert len(d.gates) == len(GATE_NAMES)
        assert not failed
        assert not missing or s.promoted
    if d.action is Action.WAIT:
        assert now < s.wave_started_at + s.bake_s
        assert not s.promoted
    if d.action is Action.EXTEND:
        assert now < s.wave_started_at + s.bake_s + s.max_extension_s
        assert missing and not failed
    if d.action in (Action.PAUSE, Action.ROLLBACK):
        expected = Action.ROLLBACK if s.on_failure is FailurePolicy.ROLLBACK else Action.PAUSE
        assert d.action is expected
        assert failed or missing


@settings(max_examples=150, deadline=None)
@given(
    n_waves=st.integers(1, 4),
    bake=st.floats(0.0, 40.0),
    extension=st.floats(0.0, 40.0),
    policy=st.sampled_from(FailurePolicy),
    t=thresholds,
    feed=st.lists(st.one_of(st.none(), st.just(GOOD), observations()), min_size=1, max_size=12),
    steps=st.lists(st.floats(1.0, 30.0), min_size=1, max_size=8),
    promotions=st.lists(st.booleans(), min_size=1, max_size=8),
)
def test_driver_loop_terminates_without_skipping(
    n_waves: int,
    bake: float,
    extension: float,
    policy: FailurePolicy,
    t: GateThresholds,
    feed: list[Observations | None],
    steps: list[float],
    promotions: list[bool],
) -> None:
    s = RolloutState(
        status=RolloutStatus.RUNNING,
        waves=tuple(range(1, n_waves + 1)),
        wave=0,
        wave_started_at=T0,
        bake_s=bake,
        max_extension_s=extension,
        on_failure=policy,
        thresholds=t,
    )
    now = T0
    # Time moves >= 1 s per tick, so a wave sees at most floor(bake + extension) + 1 ticks
    # before its deadline and decides on the next one.
    bound = n_waves * (math.floor(bake + extension) + 2)
    visited = [0]
    for tick in range(bound):
        d = decide(s, feed[tick % len(feed)], now)
        check_decision(d, s, now)
        if d.action in TERMINAL:
            event(f"{d.action.value} in wave {s.wave + 1} of {n_waves}")
            break
        if d.action is Action.ADVANCE:
            assert d.next_wave is not None
            s = dataclasses.replace(s, wave=d.next_wave, wave_started_at=now, promoted=False)
            visited.append(s.wave)
        elif promotions[tick % len(promotions)] and tick % 3 == 2:
            s = dataclasses.replace(s, promoted=True)  # an operator promotes now and then
        now += steps[tick % len(steps)]
    else:
        pytest.fail(f"no final decision after {bound} ticks (wave {s.wave}, last {d})")
    assert visited == list(range(len(visited)))  # waves taken in order, none skipped


@settings(max_examples=50, deadline=None)
@given(st.one_of(st.none(), observations()), thresholds, st.floats(0.0, 10_000.0))
def test_paused_or_finished_rollouts_never_act(
    o: Observations | None, t: GateThresholds, dt: float
) -> None:
    for status in RolloutStatus:
        if status is RolloutStatus.RUNNING:
            continue
        d = decide(state(status=status, thresholds=t), o, T0 + dt)
        assert d.action is Action.NONE

"""Trends on constructed series with known answers (aggregator/analysis/trends.py,
docs/trends.md): the rate and acceleration of a line, a parabola and a draining series, the
class each gets with and without Gaussian noise of 2 % of its range, and when each reaches a
limit against the analytic answer.  Seeded random only."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aggregator.analysis import trends

DAY = 86400.0
T0 = 1.7e9  # Unix seconds: the fit must not be spoiled by their size
R = 1000.0  # the series' range over the window
N = 97  # one point every 15 minutes over a day


def regular() -> np.ndarray:
    return T0 + np.linspace(0.0, DAY, N)


def irregular(seed: int = 0) -> np.ndarray:
    """Uneven times over the day: a burst of dense points in its second hour, gaps elsewhere."""
    rng = np.random.default_rng(seed)
    sparse = rng.uniform(0.0, DAY, 60)
    burst = rng.uniform(3600.0, 7200.0, 200)
    return T0 + np.sort(np.concatenate([[0.0, DAY], sparse, burst]))


# u runs from 0 (the window's start) to 1 (its last point); each shape with its class, its value,
# rate (per second) and acceleration (per second²) at the last point.
SHAPES = {
    "stable": (lambda u: 1500.0 + 0 * u, "stable", 1500.0, 0.0, 0.0),
    "linear": (lambda u: 1000.0 + R * u, "growing", 2000.0, R / DAY, 0.0),
    "quadratic": (lambda u: 1000.0 + R * u**2, "accelerating", 2000.0, 2 * R / DAY, 2 * R / DAY**2),
    "concave": (
        lambda u: 1000.0 + R * (1.5 * u - 0.5 * u**2),
        "decelerating",
        2000.0,
        0.5 * R / DAY,
        -R / DAY**2,
    ),
    "draining": (lambda u: 2000.0 - R * u, "draining", 1000.0, -R / DAY, 0.0),
}


def series(shape: str, t: np.ndarray, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    u = (t - t[0]) / (t[-1] - t[0])
    v = SHAPES[shape][0](u)
    if noise:
        v = v + np.random.default_rng(seed).normal(0.0, noise, t.size)
    return v


@pytest.mark.parametrize("times", [regular, irregular], ids=["regular", "irregular"])
@pytest.mark.parametrize("shape", SHAPES)
def test_each_shape_gets_its_rate_acceleration_and_class(shape, times):
    t = times()
    f = trends.fit(t, series(shape, t))
    _, cls, value, slope, accel = SHAPES[shape]
    assert f.n == t.size and f.degree == 2 and f.span_seconds == pytest.approx(DAY)
    assert f.value == pytest.approx(value, rel=1e-9)
    assert f.slope == pytest.approx(slope, rel=1e-6, abs=1e-12)
    assert f.accel == pytest.approx(accel, rel=1e-6, abs=1e-15)
    assert trends.classify(f) == cls


def test_linear_growth_is_never_called_accelerating_and_a_quadratic_one_is():
    # Whatever its size and offset, a straight line is growing and a parabola bending upwards
    # over the window accelerating, as long as the window's change is more than MIN_SHARE of
    # the series' largest value; a smaller one is stable.
    t = regular()
    u = (t - t[0]) / DAY
    for slope in (1e-3, 1.0, 1e6, 1e12):
        for offset in (0.0, 10 * slope, 100 * slope, -100 * slope):
            assert trends.classify(trends.fit(t, offset + slope * u)) == "growing"
            assert trends.classify(trends.fit(t, offset + slope * (u + u**2))) == "accelerating"
        trivial = 1e4 * slope
        assert trends.classify(trends.fit(t, trivial + slope * u)) == "stable"
        assert trends.classify(trends.fit(t, trivial + slope * (u + u**2))) == "stable"


@pytest.mark.parametrize("times", [regular, irregular], ids=["regular", "irregular"])
def test_noise_of_2_percent_of_the_range_flips_fewer_than_5_percent_of_verdicts(times):
    rates = {}
    for shape in SHAPES:
        flips = 0
        for seed in range(100):
            t = times(seed) if times is irregular else times()
            expected = trends.classify(trends.fit(t, series(shape, t)))
            noisy = trends.classify(trends.fit(t, series(shape, t, 0.02 * R, seed)))
            flips += noisy != expected
        rates[shape] = flips / 100
    print(f"flip rates under noise of 2% of the range ({times.__name__} sampling): {rates}")
    assert all(rate < 0.05 for rate in rates.values()), rates


def test_the_linear_fit_of_a_straight_line_does_not_see_curvature_under_noise():
    # The same straight line, noisy, 100 seeds: never accelerating nor decelerating more than
    # the K-standard-error test allows.
    t = regular()
    curved = 0
    for seed in range(100):
        cls = trends.classify(trends.fit(t, series("linear", t, 0.02 * R, seed)))
        curved += cls in ("accelerating", "decelerating")
    assert curved < 5


def test_dense_bursts_do_not_outweigh_the_hours_they_cover():
    # A line, with a burst of 200 points in its second hour lying 5 % of the range above it (a
    # misbehaving hour): each point weighs the time it stands for, so the burst counts as about
    # one hour of the day.  The rate stays within 5 % of the line's, where a fit that counts
    # every point alike is off by three times as much.
    rng = np.random.default_rng(3)
    t = np.sort(np.concatenate([np.linspace(0, DAY, 49), rng.uniform(3600, 7200, 200)])) + T0
    v = 1000.0 + R * (t - T0) / DAY
    v[(t - T0 > 3600) & (t - T0 < 7200)] += 0.05 * R
    f = trends.fit(t, v)
    assert f.slope == pytest.approx(R / DAY, rel=0.05)
    assert trends.classify(f) == "growing"
    u = (t - T0) / DAY
    p = np.linalg.lstsq(np.vander(u, 3, increasing=True), v, rcond=None)[0]
    alike = (p[1] + 2 * p[2]) / DAY
    assert abs(alike - R / DAY) > 3 * abs(f.slope - R / DAY)


def test_the_window_takes_the_last_seconds_only():
    # Flat for a day, then growing for six hours: over the last 6 hours it is a line.
    t = T0 + np.arange(0, 30 * 3600 + 1, 600.0)
    v = np.where(t - T0 <= DAY, 100.0, 100.0 + (t - T0 - DAY) * 0.01)
    f = trends.fit(t, v, window_seconds=6 * 3600)
    assert f.span_seconds == 6 * 3600 and f.slope == pytest.approx(0.01)
    assert trends.classify(f) == "growing"
    assert trends.classify(trends.fit(t, v)) == "accelerating"  # the whole: flat, then rising


# -- projections -----------------------------------------------------------------------------
def test_projections_match_the_analytic_answer():
    t = regular()
    # 1000 + R u²: reaches 5000 when (1 + τ/DAY)² = 4, τ = DAY; its tangent at the last point
    # (2000, rising 2R per day) reaches it after 3000 / 2000 days.
    p = trends.project(trends.fit(t, series("quadratic", t)), 5000.0)
    assert p["quadratic"]["seconds"] == pytest.approx(DAY, rel=1e-6)
    assert p["quadratic"]["at"] == pytest.approx(t[-1] + DAY, rel=1e-9)
    assert p["linear"]["seconds"] == pytest.approx(1.5 * DAY, rel=1e-6)
    # Draining 2000 - R u reaches 0 a day after its last point (1000 left, R per day).
    p = trends.project(trends.fit(t, series("draining", t)), 0.0)
    assert p["linear"]["seconds"] == pytest.approx(DAY, rel=1e-6)
    assert p["quadratic"]["seconds"] == pytest.approx(DAY, rel=1e-6)
    # Growing never reaches a limit below it, nor does concave growth that turns first:
    # 1000 + R(1.5u - 0.5u²) peaks at u = 1.5 at 2125.
    p = trends.project(trends.fit(t, series("linear", t)), 0.0)
    assert p["linear"]["seconds"] is None and p["linear"]["at"] is None
    p = trends.project(trends.fit(t, series("concave", t)), 3000.0)
    assert p["quadratic"]["seconds"] is None
    assert p["linear"]["seconds"] == pytest.approx(2 * DAY, rel=1e-6)  # 1000 left at R/2 a day
    p = trends.project(trends.fit(t, series("concave", t)), 2100.0)
    # 1000 + R(1.5u - 0.5u²) = 2100: u = 1.5 - sqrt(0.05)
    assert p["quadratic"]["seconds"] == pytest.approx((0.5 - math.sqrt(0.05)) * DAY, rel=1e-6)


@pytest.mark.parametrize(
    "shape,limit,kind,answer",
    [
        ("quadratic", 5000.0, "quadratic", DAY),
        ("quadratic", 5000.0, "linear", 1.5 * DAY),
        ("linear", 3000.0, "linear", DAY),
        ("linear", 3000.0, "quadratic", DAY),
        ("draining", 0.0, "linear", DAY),
    ],
)
def test_the_band_holds_the_analytic_answer_under_noise(shape, limit, kind, answer):
    t = regular()
    inside, widths = 0, []
    for seed in range(100):
        p = trends.project(trends.fit(t, series(shape, t, 0.02 * R, seed)), limit)[kind]
        assert p["band"] and p["earliest_seconds"] is not None
        assert p["earliest_seconds"] <= p["seconds"]
        assert p["latest_seconds"] is None or p["seconds"] <= p["latest_seconds"]
        latest = math.inf if p["latest_seconds"] is None else p["latest_seconds"]
        inside += p["earliest_seconds"] <= answer <= latest
        widths.append(latest - p["earliest_seconds"])
    print(f"{shape} to {limit:g} ({kind}): analytic answer in the band for {inside} of 100 seeds")
    assert inside >= 90
    assert np.median(widths) < answer  # a band, not everything


def test_a_limit_already_reached_is_reached_now():
    t = regular()
    p = trends.project(trends.fit(t, series("linear", t)), 2000.0)
    assert p["linear"]["seconds"] == 0.0 and p["quadratic"]["seconds"] == 0.0


# -- degenerate input --------------------------------------------------------------------------
def test_fewer_than_four_points_give_what_they_can_and_none_for_the_rest():
    empty = trends.fit([], [])
    assert empty.n == 0 and empty.value is None and empty.slope is None
    assert trends.classify(empty) is None
    assert trends.project(empty, 10.0)["linear"] == trends.NO_CROSSING
    one = trends.fit([T0], [5.0])
    assert (one.value, one.slope, one.accel) == (5.0, None, None)
    two = trends.fit([T0, T0 + 10], [5.0, 7.0])
    assert two.slope == pytest.approx(0.2) and two.accel is None and two.slope_se is None
    assert trends.classify(two) is None  # no standard error: no verdict, not "stable"
    p = trends.project(two, 9.0)
    assert p["linear"]["seconds"] == pytest.approx(10.0) and not p["linear"]["band"]
    assert p["quadratic"] == trends.NO_CROSSING
    three = trends.fit([T0, T0 + 10, T0 + 20], [5.0, 7.1, 8.9])
    assert three.degree == 1 and three.accel is None and three.slope_se is not None


def test_unusable_values_and_repeated_times_are_dropped_or_merged():
    t = [T0, T0, T0 + 1, T0 + 1, T0 + 2, T0 + 3, T0 + 4, None, "x", T0 + 5, T0 + 6]
    v = [0.0, 2.0, 1.0, 3.0, 3.0, float("nan"), None, 9.0, 9.0, True, 7.0]
    f = trends.fit(t, v)
    # Left: (0, mean 1), (1, mean 2), (2, 3), (6, 7): the line 1 + t.
    assert f.n == 4 and f.slope == pytest.approx(1.0) and f.accel == pytest.approx(0.0, abs=1e-9)
    assert f.value == pytest.approx(7.0)


def test_constant_series_are_stable_with_nothing_made_up():
    t = regular()
    for c in (0.0, 1.0, 1e15):
        f = trends.fit(t, np.full(t.size, c))
        assert f.value == pytest.approx(c) and f.slope == pytest.approx(0.0, abs=1e-9)
        assert f.residual_std == pytest.approx(0.0, abs=1e-6 * max(c, 1.0))
        assert trends.classify(f) == "stable"
        p = trends.project(f, c + 1.0)
        assert p["linear"]["seconds"] is None and p["quadratic"]["seconds"] is None


def test_the_size_of_timestamps_does_not_change_the_fit():
    base = np.linspace(0.0, 3600.0, 50)
    v = 3.0 + 0.5 * base + 1e-4 * base**2
    near, far = trends.fit(base, v), trends.fit(base + 4e9, v)
    assert far.slope == pytest.approx(near.slope, rel=1e-9)
    assert far.accel == pytest.approx(near.accel, rel=1e-6)
    assert far.accel == pytest.approx(2e-4, rel=1e-6)


@pytest.mark.parametrize(
    "t,v",
    [
        ([], []),
        ([T0] * 5, [1, 2, 3, 4, 5]),  # one time
        ([1, 2, 3, 4], [None] * 4),
        ([1, 2, 3, 4], [float("inf"), 1e308, -1e308, 1e308]),
        ([1, 2, 3, 4, 5], [1e308, -1e308, 1e308, -1e308, 1e308]),
        ([0, 1e-9, 2e-9, 3e-9], [1, 2, 3, 4]),
        ([0, 1, 2, 1e300], [1, 2, 3, 4]),
        ([1, 2, 3, 4], [2**70, -(2**70), 0, 1]),
        (["a", {}, [], 3], [1, 2, 3, 4]),
        (np.arange(5), np.array([1, 2, np.nan, 4, 5])),
    ],
)
def test_degenerate_input_never_raises_and_every_number_is_finite_or_none(t, v):
    for window in (None, 0.0, -5.0, 2.0, float("nan")):
        f = trends.fit(t, v, window)
        for value in f.as_dict().values():
            assert value is None or math.isfinite(value)
        cls = trends.classify(f)
        assert cls is None or cls in trends.CLASSES
        for limit in (0.0, 10.0, float("nan"), 1e308):
            p = trends.project(f, limit)
            for kind in ("linear", "quadratic"):
                for key in ("seconds", "earliest_seconds", "latest_seconds", "at"):
                    assert p[kind][key] is None or math.isfinite(p[kind][key])


def test_times_and_values_of_different_lengths_are_refused_in_one_line():
    with pytest.raises(ValueError, match="differ in length"):
        trends.fit([1, 2, 3], [1, 2])


def test_the_closed_form_crossing_is_the_projections_own():
    # `reaches` (the alert rules' fast crossing) gives what `project` finds by search, for
    # rising, falling, turning and flat series of many shapes.
    rng = np.random.default_rng(17)
    checked = 0
    for _ in range(300):
        t = np.sort(rng.uniform(0, 86400, 40))
        a, b, c = rng.normal(0, 1e-6), rng.normal(0, 1e-2), rng.uniform(100, 1000)
        v = c + b * t + a * t**2 + rng.normal(0, 1, t.size)
        f = trends.fit(1.7e9 + t, v)
        limit = float(v[-1] + rng.normal(0, 500))
        projected = trends.project(f, limit)
        for degree, way in ((1, "linear"), (2, "quadratic")):
            want, got = projected[way]["seconds"], trends.reaches(f, limit, degree)
            if want is None:
                assert got is None, (degree, f, limit)
            else:
                assert got == pytest.approx(want, rel=1e-6, abs=1e-3), (degree, f, limit)
                checked += 1
    assert checked > 100


def test_a_crossing_past_what_a_float_holds_is_none_not_now():
    f = trends.fit([0.0, 1e-3, 2e-3, 3e-3], [0.0, 1.0, 4.0, 9.0])
    assert trends.reaches(f, 1e300) is None
    assert trends.project(f, 1e300)["quadratic"]["seconds"] is None

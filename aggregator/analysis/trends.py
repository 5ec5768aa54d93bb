"""Trends of one series (a filesystem's used bytes, a temperature, an NFS counter): its rate and
acceleration now, a trend class, and when it reaches a limit.  Pure functions over plain numbers
(docs/trends.md): no I/O, no clock.

The fit (`fit`).  A degree-2 polynomial, fitted by weighted least squares to the points of the
window that ends at the series' last point: the whole series given, or the last
`window_seconds` of it (the caller picks the window: `nomadectl disk --hours N`).  Times are
seconds relative to the last point, centred and scaled inside the fit, so that Unix
timestamps of 1.7e9 s do not spoil its conditioning.  Each point weighs the time it stands
for (half the gaps to its neighbours, each gap capped at WEIGHT_CAP mean gaps, so that a
point beside an outage does not outweigh the rest), so that a
burst of dense samples counts no more than the hour it covers; equally spaced points weigh the
same.  Points at the same time count once, at their mean; a time or value that is not a finite
number is dropped.  From 4 distinct times on the fit is quadratic; with 2 or 3 it is a line
(no acceleration); with 1 there is only a value; with none, nothing.  What is not known is
None, never 0.  The rate (units per second) and acceleration (units per second squared) are
the fitted curve's first and second derivatives at the last point, with standard errors from
the residuals (their variance over n - parameters degrees of freedom; a line through 2 points
has none).

The class (`classify`), one of CLASSES, from two tests at K standard errors:
- the rate counts when |rate| > K·se(rate) and the change it makes over the window's span,
  |rate|·span, is more than MIN_SHARE of the series' scale (a filesystem's size; by default the
  largest |value| in the window), so that a statistically clear but trivial drift stays stable;
- the curvature counts when |accel| > K·se(accel), and over one more window ahead it moves the
  projection by more than CURVE_SHARE of what the rate alone moves it (|accel|·span²/2 >
  CURVE_SHARE·|rate|·span) and by more than MIN_SHARE of the scale.
No rate that counts: `stable`; a falling one: `draining`; a rising one: `accelerating` or
`decelerating` where the curvature counts (positive, negative), else `growing`.  A straight
line's fitted curvature is noise, within K standard errors (a false `accelerating` about 0.3 %
of the time under Gaussian noise), or too small to move its projection; a quadratic's is
neither.  None where the rate or its standard error is unknown (fewer than 3 points).

The projection (`project`): when the series reaches LIMIT, from the side its fitted value is on
now, along the line (value + rate·τ) and along the parabola (value + rate·τ + accel·τ²/2); the
first time τ ≥ 0 that it gets there, None where it never does (moving away, or a parabola that
turns before it) or not within `horizon` (MAX_HORIZON, ten years).  Its band: the first times
the curve plus and minus BAND_SE standard errors of the fitted curve at τ (from the fit's
covariance of value, rate and acceleration) reach the limit, the earliest and the latest; a
latest of None says the limit may never be reached.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

K = 3.0  # standard errors a rate or a curvature must exceed to count
MIN_SHARE = 0.002  # of the scale: the least change over the window that counts
CURVE_SHARE = 0.1  # of the rate's own change over a window ahead: the least curvature's share
BAND_SE = 2.0  # the projection band: the fitted curve ± this many standard errors
WEIGHT_CAP = 4.0  # a gap counts at most this many mean gaps in a point's weight
MAX_HORIZON = 10 * 365.25 * 86400.0  # no projection beyond ten years
CLASSES = ("stable", "growing", "accelerating", "decelerating", "draining")


@dataclass(frozen=True)
class Fit:
    """A series' fit at its last point: value, rate (units/s), acceleration (units/s²), their
    standard errors, the residuals' standard deviation, the points and the span fitted."""

    n: int = 0
    span_seconds: float | None = None
    t_last: float | None = None  # the last point's time, as given
    last: float | None = None  # its value (the mean of values given at that time)
    magnitude: float | None = None  # the largest |value| in the window
    degree: int | None = None
    value: float | None = None  # the fitted value at the last point
    slope: float | None = None
    accel: float | None = None
    value_se: float | None = None
    slope_se: float | None = None
    accel_se: float | None = None
    residual_std: float | None = None
    cov: tuple[tuple[float, ...], ...] | None = None  # of (value, slope, accel)

    def as_dict(self) -> dict[str, Any]:
        """The fit as the API shows it (without the covariance)."""
        out = asdict(self)
        del out["cov"]
        return out


def _number(x: Any) -> float:
    """X as a finite float, else NaN (a bool, a string, None, inf are no numbers here)."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return math.nan
    try:
        f = float(x)
    except OverflowError:
        return math.nan
    return f if math.isfinite(f) else math.nan


def _points(t: Any, v: Any) -> tuple[np.ndarray, np.ndarray]:
    """Distinct finite times, sorted, each with the mean of its finite values."""
    ts = np.array([_number(x) for x in t], dtype=float)
    vs = np.array([_number(x) for x in v], dtype=float)
    if ts.size != vs.size:
        raise ValueError(f"times and values differ in length ({ts.size} and {vs.size})")
    keep = np.isfinite(ts) & np.isfinite(vs)
    ts, vs = ts[keep], vs[keep]
    if ts.size == 0:
        return ts, vs
    times, where = np.unique(ts, return_inverse=True)
    with np.errstate(all="ignore"):
        means = np.bincount(where, vs) / np.bincount(where)
    ok = np.isfinite(means)
    return times[ok], means[ok]


def _weights(ts: np.ndarray) -> np.ndarray:
    """Each point's weight: the time it stands for (half of each gap beside it, a gap counted at
    most WEIGHT_CAP mean gaps; the end points their one gap), scaled to a mean of 1."""
    if ts.size < 3:
        return np.ones(ts.size)
    gaps = np.diff(ts)
    gaps = np.minimum(gaps, WEIGHT_CAP * float(np.mean(gaps)))
    w = np.empty(ts.size)
    w[0], w[-1] = gaps[0], gaps[-1]
    w[1:-1] = (gaps[:-1] + gaps[1:]) / 2
    if not np.all(w > 0):
        return np.ones(ts.size)
    return w / w.mean()


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def fit(t: Any, v: Any, window_seconds: float | None = None) -> Fit:
    """The fit of values V at times T (seconds) over the window ending at the last time: all of
    it, or its last WINDOW_SECONDS (module docstring)."""
    ts, vs = _points(t, v)
    if ts.size and window_seconds is not None and math.isfinite(window_seconds):
        keep = ts >= ts[-1] - max(0.0, window_seconds)
        ts, vs = ts[keep], vs[keep]
    if ts.size == 0:
        return Fit()
    n, span = int(ts.size), float(ts[-1] - ts[0])
    base: dict[str, Any] = dict(
        n=n,
        span_seconds=span,
        t_last=float(ts[-1]),
        last=float(vs[-1]),
        magnitude=float(np.max(np.abs(vs))),
    )
    if n == 1:
        return Fit(**base, degree=0, value=float(vs[-1]))
    with np.errstate(all="ignore"):
        return _solve(ts, vs, base)


def _solve(ts: np.ndarray, vs: np.ndarray, base: dict[str, Any]) -> Fit:
    """The weighted least-squares polynomial, in u = (t - middle) / (span / 2), which runs from -1
    to 1 (the last point at u = 1), over values centred and scaled to at most 1."""
    n, span = base["n"], base["span_seconds"]
    degree = 2 if n >= 4 else 1
    half = np.float64(span) / 2
    u = (ts - ts[0]) / half - 1.0
    centre = float(vs.mean())
    unit = np.float64(np.max(np.abs(vs - centre))) or np.float64(1.0)
    y = (vs - centre) / unit
    x = np.vander(u, degree + 1, increasing=True)
    w = _weights(ts)
    sw = np.sqrt(w)
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(x)) and np.isfinite(unit)):
        return Fit(**base, degree=0, value=base["last"])  # values past what a float can fit
    try:
        p, *_ = np.linalg.lstsq(x * sw[:, None], y * sw, rcond=None)
    except np.linalg.LinAlgError:
        return Fit(**base, degree=0, value=base["last"])
    # Value, rate and acceleration at u = 1 (the last point), per unit of the values.
    jac = np.array([[1.0, 1.0, 1.0], [0.0, 1.0 / half, 2.0 / half], [0.0, 0.0, 2.0 / half**2]])
    jac = jac[: degree + 1, : degree + 1]
    est = jac @ p * unit
    est[0] += centre
    values = [_finite(e) for e in est] + [None] * (2 - degree)
    dof = n - degree - 1
    if dof <= 0:
        return Fit(**base, degree=degree, value=values[0], slope=values[1], accel=values[2])
    resid = y - x @ p
    var = float(resid @ resid) / dof
    # Weights that are no inverse variances: the sandwich form, for noise of equal variance.
    bread = np.linalg.pinv(x.T @ (w[:, None] * x))
    cov_p = bread @ (x.T @ ((w**2)[:, None] * x)) @ bread * var
    cov = jac @ cov_p @ jac.T * unit**2
    if not np.all(np.isfinite(cov)):
        return Fit(**base, degree=degree, value=values[0], slope=values[1], accel=values[2])
    se = [math.sqrt(max(0.0, c)) for c in np.diag(cov)] + [None] * (2 - degree)
    return Fit(
        **base,
        degree=degree,
        value=values[0],
        slope=values[1],
        accel=values[2],
        value_se=se[0],
        slope_se=se[1],
        accel_se=se[2],
        residual_std=_finite(math.sqrt(var) * unit),
        cov=tuple(tuple(float(c) for c in row) for row in cov),
    )


# -- the class ----------------------------------------------------------------------------------
def _scale(f: Fit, scale: float | None) -> float:
    s = _number(scale)
    return abs(s) if math.isfinite(s) and s != 0 else (f.magnitude or 0.0)


def significance(f: Fit, scale: float | None = None) -> tuple[bool, bool]:
    """(the rate counts, the curvature counts) by the tests of the module docstring."""
    if f.slope is None or f.slope_se is None or not f.span_seconds:
        return False, False
    span, size = f.span_seconds, _scale(f, scale)
    rate = abs(f.slope) > K * f.slope_se and abs(f.slope) * span > MIN_SHARE * size
    curve = (
        f.accel is not None
        and f.accel_se is not None
        and abs(f.accel) > K * f.accel_se
        and abs(f.accel) * span**2 / 2 > CURVE_SHARE * abs(f.slope) * span
        and abs(f.accel) * span**2 / 2 > MIN_SHARE * size
    )
    return rate, curve


def classify(f: Fit, scale: float | None = None) -> str | None:
    """One of CLASSES for fit F of a series whose scale is SCALE (a filesystem's size; None:
    the largest |value| fitted); None where the rate or its standard error is unknown."""
    if f.slope is None or f.slope_se is None:
        return None
    rate, curve = significance(f, scale)
    if not rate:
        return "stable"
    if f.slope < 0:
        return "draining"
    if curve and f.accel is not None:
        return "accelerating" if f.accel > 0 else "decelerating"
    return "growing"


# -- projections --------------------------------------------------------------------------------
NO_CROSSING: dict[str, Any] = {
    "seconds": None,
    "at": None,
    "earliest_seconds": None,
    "latest_seconds": None,
    "band": False,
}


def project(f: Fit, limit: float, horizon: float = MAX_HORIZON) -> dict[str, Any]:
    """When fit F's series reaches LIMIT: `linear` (from the rate) and `quadratic` (rate and
    acceleration), each {seconds (after the last point), at (its time), earliest_seconds,
    latest_seconds, band (whether the band is known)}; None where it does not within HORIZON."""
    lim = _number(limit)
    return {
        "limit": lim if math.isfinite(lim) else None,
        "linear": _crossing(f, lim, 1, horizon),
        "quadratic": _crossing(f, lim, 2, horizon),
    }


def reaches(f: Fit, limit: float, degree: int = 2, horizon: float = MAX_HORIZON) -> float | None:
    """Seconds after the last point until fit F's curve (DEGREE 1: the line, 2: the parabola)
    reaches LIMIT, in closed form, without the band: `project`'s `seconds` at a fraction of its
    cost, for callers that test many series at once (the alert rules).  None where it does
    not within HORIZON."""
    lim, value, slope = _number(limit), f.value, f.slope
    if value is None or slope is None or not math.isfinite(lim):
        return None
    accel = (f.accel or 0.0) if degree == 2 else 0.0
    gap = lim - value
    if gap == 0:
        return 0.0
    a, b, c = accel / 2.0, slope, -gap  # a·τ² + b·τ + c = 0
    with np.errstate(all="ignore"):
        if a == 0:
            roots = [] if b == 0 else [-c / b]
        else:
            disc = b * b - 4 * a * c
            if not math.isfinite(disc) or disc < 0:
                return None  # past what a float holds: no crossing to trust
            q = -0.5 * (b + math.copysign(math.sqrt(disc), b))  # the stable form of the roots
            if not math.isfinite(q):
                return None
            roots = [q / a] + ([c / q] if q != 0 else [])
    # A root of exactly 0 with the series not at its limit is a float's rounding, not "now".
    ahead = [r for r in roots if math.isfinite(r) and 0 < r <= horizon]
    return min(ahead) if ahead else None


def _crossing(f: Fit, limit: float, degree: int, horizon: float) -> dict[str, Any]:
    coef = [f.value, f.slope, None if f.accel is None else f.accel / 2][: degree + 1]
    if not math.isfinite(limit) or any(c is None for c in coef):
        return dict(NO_CROSSING)
    c = np.array(coef, dtype=float)
    up = limit >= c[0]
    with np.errstate(all="ignore"):
        seconds = _first(lambda tau: _poly(c, tau), limit, up, horizon, f.span_seconds or 0.0)
        out = {**NO_CROSSING, "seconds": seconds}
        if seconds is not None and f.t_last is not None:
            out["at"] = f.t_last + seconds
        if f.cov is None:
            return out
        cov = np.array(f.cov)[: degree + 1, : degree + 1]
        cov[2:, :] /= 2  # the parabola's third coefficient is accel / 2
        cov[:, 2:] /= 2
        near = BAND_SE if up else -BAND_SE
        span = f.span_seconds or 0.0
        out["earliest_seconds"] = _first(
            lambda tau: _poly(c, tau) + near * _sd(cov, tau), limit, up, horizon, span
        )
        out["latest_seconds"] = _first(
            lambda tau: _poly(c, tau) - near * _sd(cov, tau), limit, up, horizon, span
        )
        out["band"] = True
    return out


def _powers(c: np.ndarray, tau: Any) -> np.ndarray:
    tau = np.asarray(tau, dtype=float)
    return np.stack([tau**k for k in range(c.size)])


def _poly(c: np.ndarray, tau: Any) -> Any:
    return c @ _powers(c, tau)


def _sd(cov: np.ndarray, tau: Any) -> Any:
    p = _powers(cov[0], tau)
    return np.sqrt(np.maximum(0.0, np.einsum("i...,ij,j...->...", p, cov, p)))


def _first(curve: Any, limit: float, up: bool, horizon: float, span: float) -> float | None:
    """The first τ in [0, HORIZON] where CURVE(τ) reaches LIMIT (from below when UP), found on
    a geometric grid and refined by bisection; None where it does not."""

    def there(tau: Any) -> Any:
        y = curve(tau)
        return (y >= limit) if up else (y <= limit)

    if bool(there(0.0)):
        return 0.0
    grid = np.geomspace(max(span, 1.0) * 1e-4, horizon, 4000)
    hit = np.flatnonzero(there(grid))
    if hit.size == 0:
        return None
    i = int(hit[0])
    lo, hi = (0.0 if i == 0 else float(grid[i - 1])), float(grid[i])
    for _ in range(80):
        mid = (lo + hi) / 2
        if bool(there(mid)):
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-9 * max(1.0, hi):
            break
    return hi

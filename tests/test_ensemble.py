import numpy as np
from sklearn.linear_model import LogisticRegression

from models import ensemble


def test_platt_scaling_matches_logistic_regression_even_on_overconfident_scores():
    rng = np.random.default_rng(0)
    failed = rng.random(3000) < 0.25
    # Overconfident scores: mostly 0.001 or 0.999, right only 70% of the time.
    right = rng.random(3000) < 0.7
    p = np.where(failed == right, 0.999, 0.001)
    a, b = ensemble.fit_platt(p, failed)
    lr = LogisticRegression(C=1e9, max_iter=1000).fit(ensemble.logit(p)[:, None], failed)
    assert np.isfinite(a) and np.isfinite(b)
    assert abs(a - lr.coef_[0, 0]) < 1e-3 and abs(b - lr.intercept_[0]) < 1e-3


def test_combine_is_a_weighted_mixture_with_calibrated_failure():
    members = {m: np.array([[0.7, 0.1, 0.1, 0.1, 0.0, 0.0]]) for m in ensemble.MEMBERS}
    params = {"weights": {"gnn": 0.5, "gbt": 0.5, "lr": 0.0}, "platt": (1.0, 0.0),
              "class_health": [1.0, 0.0, 0.0, 0.0, 0.5, 0.0]}  # fmt: skip
    out = ensemble.combine(members, params)
    assert np.allclose(out["probs"], members["gnn"])
    assert np.allclose(out["p_fail"], [0.3]) and np.allclose(out["health"], [0.7])

import numpy as np
import pytest
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
    params = {
        "weights": {"gnn": 0.5, "gbt": 0.5, "lr": 0.0},
        "platt": (1.0, 0.0),
        "class_health": [1.0, 0.0, 0.0, 0.0, 0.5, 0.0],
    }
    out = ensemble.combine(members, params)
    assert np.allclose(out["probs"], members["gnn"])
    assert np.allclose(out["p_fail"], [0.3]) and np.allclose(out["health"], [0.7])


def _validation(seed: int = 0, n: int = 1000):
    """Validation jobs (30% fail) and two overconfident members, right 85% of the time."""
    from models.features import CLASSES

    rng = np.random.default_rng(seed)
    failed = rng.random(n) < 0.3
    y = np.where(failed, CLASSES.index("FAILED"), CLASSES.index("COMPLETED"))

    def member(p_fail: np.ndarray) -> np.ndarray:
        out = np.zeros((n, len(CLASSES)))
        out[:, CLASSES.index("FAILED")], out[:, CLASSES.index("COMPLETED")] = p_fail, 1 - p_fail
        return out

    right = rng.random(n) < 0.85
    members = {
        "gbt": member(np.where(failed == right, 0.99, 0.01)),
        "lr": member(np.where(failed == right, 0.98, 0.02)),
    }
    return failed, y, member, members


def test_a_member_with_inverted_validation_scores_gets_weight_zero():
    failed, y, member, members = _validation()
    # Nearly constant and inverted: it ranks failures below successes (AUC 0), yet mixing it in
    # would soften the overconfident members and lower the log loss.
    members["gnn"] = member(np.where(failed, 0.25, 0.35))
    aucs = ensemble.member_aucs(members, y)
    assert aucs["gnn"] == 0.0 and aucs["gbt"] > 0.8 and aucs["lr"] > 0.8
    unjudged = ensemble.choose_weights(members, y, aucs=dict.fromkeys(ensemble.MEMBERS))
    assert unjudged["gnn"] > 0  # what the grid search alone gives it
    weights = ensemble.choose_weights(members, y)
    assert weights["gnn"] == 0 and sum(weights.values()) == pytest.approx(1.0)
    assert not ensemble.no_better_than_chance(aucs)


def test_when_no_member_beats_chance_all_keep_their_place_and_the_model_says_so():
    failed, y, member, members = _validation()
    members = {
        m: member(np.where(failed, 0.2, 0.4) + 0.01 * i) for i, m in enumerate(ensemble.MEMBERS)
    }
    aucs = ensemble.member_aucs(members, y)
    assert all(a <= 0.5 for a in aucs.values())
    assert ensemble.no_better_than_chance(aucs)
    assert ensemble.eligible(aucs) == list(ensemble.MEMBERS)
    assert sum(ensemble.choose_weights(members, y, aucs=aucs).values()) == pytest.approx(1.0)


def test_auc_agrees_with_scikit_learn_on_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    failed = rng.random(500) < 0.2
    score = np.round(rng.random(500) + 0.3 * failed, 1)
    assert ensemble.auc(failed, score) == pytest.approx(roc_auc_score(failed, score))
    assert ensemble.auc(np.zeros(5, bool), score[:5]) is None


def test_p_fail_shown_to_users_stays_within_its_bounds():
    sure_ok = np.array([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    sure_fail = np.array([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]])
    params = {
        "weights": {"gnn": 0.0, "gbt": 1.0, "lr": 0.0},
        "platt": (3.0, 0.5),
        "class_health": [1.0, 0.0, 0.0, 0.0, 0.5, 0.0],
    }
    low = ensemble.combine({m: sure_ok for m in ensemble.MEMBERS}, params)["p_fail"]
    high = ensemble.combine({m: sure_fail for m in ensemble.MEMBERS}, params)["p_fail"]
    assert low[0] == ensemble.P_MIN == 0.02 and high[0] == ensemble.P_MAX == 0.98

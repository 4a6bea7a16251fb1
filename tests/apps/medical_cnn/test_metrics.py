import keras
import numpy as np
import pytest

from apps.medical_cnn import metrics as m


def _pairwise_auc(y, s):
    """Mann-Whitney reference: P(score_pos > score_neg) + 0.5 P(tie)."""
    pos, neg = s[y == 1][:, None], s[y == 0][None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def test_auc_matches_pairwise_reference_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) * 0.7 + 0.3 * y, 1)  # many ties
    assert m.roc_auc(y, s) == pytest.approx(_pairwise_auc(y, s), abs=1e-12)


def test_auc_matches_keras_metric():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    s = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1)
    keras_auc = keras.metrics.AUC(num_thresholds=10000)
    keras_auc.update_state(y, s)
    assert m.roc_auc(y, s) == pytest.approx(float(keras_auc.result()), abs=1e-3)


def test_roc_curve_points():
    fpr, tpr, thr = m.roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(thr, [np.inf, 0.8, 0.4, 0.35, 0.1])
    with pytest.raises(ValueError, match="needs both classes"):
        m.roc_curve([1, 1], [0.2, 0.3])


def test_youden_threshold_constructed_case():
    # Negatives 0.1..0.5, positives 0.45..0.9. Cutting at 0.45 (positive if >= 0.45)
    # gives TPR 1, FPR 1/5 -> J = 0.8; at 0.6: TPR 4/5, FPR 0 -> J = 0.8 too; at
    # 0.5: TPR 4/5, FPR 1/5. The highest best cut is 0.6; the next lower score is
    # 0.5, so the threshold is their midpoint.
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.45, 0.6, 0.7, 0.8, 0.9])
    t = m.youden_threshold(y, s)
    assert t == pytest.approx(0.55)
    out = m.binary_measures(y, s, t)
    assert (out["sensitivity"], out["specificity"]) == (0.8, 1.0)
    # A unique optimum: every positive above every negative but one.
    y2 = np.array([0, 0, 0, 1, 1, 1, 0])
    s2 = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9, 0.95])
    t2 = m.youden_threshold(y2, s2)
    assert t2 == pytest.approx(0.5)  # midpoint of 0.7 and 0.3
    assert m.binary_measures(y2, s2, t2)["youden_j"] == pytest.approx(1 - 0.25)


def test_binary_measures_hand_computed():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.6, 0.2, 0.7, 0.3, 0.2, 0.1, 0.1, 0.0])
    out = m.binary_measures(y, s, 0.5)
    # TP 3, FN 1, FP 1, TN 5
    assert out["confusion_matrix"] == [[5, 1], [1, 3]]
    assert out["accuracy"] == pytest.approx(0.8)
    assert out["sensitivity"] == pytest.approx(0.75)
    assert out["specificity"] == pytest.approx(5 / 6)
    assert out["precision"] == pytest.approx(0.75)
    assert out["f1"] == pytest.approx(0.75)
    # Nothing predicted positive: precision is undefined, not 0.
    assert m.binary_measures(y, s, 2.0)["precision"] is None


def test_multiclass_report():
    y = np.array([0, 1, 2, 2])
    p = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]])
    out = m.classification_report(y, p)
    assert out["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert out["accuracy"] == 0.75
    expected_auc = np.mean([_pairwise_auc((y == c).astype(int), p[:, c]) for c in range(3)])
    assert out["auc"] == pytest.approx(expected_auc)
    assert out["per_class"][2]["sensitivity"] == 0.5

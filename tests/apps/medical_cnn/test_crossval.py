"""Cross-validation, the ensemble model, calibration and the out-of-fold threshold."""

import dataclasses
import json

import keras
import numpy as np
import pytest

from apps.common.errors import DataError, RunDirError, UserError
from apps.common.model_io import load_keras_model
from apps.medical_cnn import calibration, metrics
from apps.medical_cnn.crossval import OOF_FILE, fold_dir, train_folds
from apps.medical_cnn.data import load_npz_data, subsample
from apps.medical_cnn.ensemble import (
    ImageShift,
    ProbabilityTemperature,
    build_ensemble,
    ensemble_info,
    ensemble_members,
)
from apps.medical_cnn.folds import pool, stratified_folds
from apps.medical_cnn.gradcam import gradcam

from .conftest import tiny_config

FOLDS = 3


# ----------------------------------------------------------------- folds


def test_folds_are_stratified_disjoint_and_seeded():
    labels = np.array([0] * 101 + [1] * 290 + [2] * 17)
    folds = stratified_folds(labels, 5, seed=7)
    assert folds.shape == labels.shape and set(folds) == set(range(5))
    # Disjoint and covering: every example is in exactly one fold (an index array can't
    # say otherwise), and the held-out sets partition the data.
    held = [np.flatnonzero(folds == f) for f in range(5)]
    assert sorted(np.concatenate(held).tolist()) == list(range(len(labels)))
    for c in (0, 1, 2):
        per_fold = np.bincount(folds[labels == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1, (c, per_fold)
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 1
    np.testing.assert_array_equal(folds, stratified_folds(labels, 5, seed=7))
    assert not np.array_equal(folds, stratified_folds(labels, 5, seed=8))


def test_folds_refuse_too_few_examples_and_bad_k():
    with pytest.raises(DataError, match="class 1 has 2 example"):
        stratified_folds([0, 0, 0, 1, 1], 3, seed=0)
    with pytest.raises(ValueError, match="folds must be an integer >= 2"):
        stratified_folds([0, 1], 1, seed=0)


# ----------------------------------------------------------------- calibration and metrics


def test_temperature_lowers_ece_on_an_overconfident_model():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0.0, 1.5, 20000)
    labels = (rng.random(20000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    overconfident = 1 / (1 + np.exp(-3.0 * true_logit))  # logits 3x too large
    t = calibration.fit_temperature(labels, overconfident)
    assert t == pytest.approx(3.0, rel=0.05)
    before = calibration.expected_calibration_error(labels, overconfident)
    after = calibration.expected_calibration_error(
        labels, calibration.apply_temperature(overconfident, t)
    )
    assert before > 0.05 and after < 0.015 and after < before / 4
    # The NLL at the fitted temperature is lower than at its neighbours.
    nll = calibration.negative_log_likelihood
    scaled = calibration.apply_temperature
    assert nll(labels, scaled(overconfident, t)) < nll(labels, scaled(overconfident, t * 1.1))
    assert nll(labels, scaled(overconfident, t)) < nll(labels, scaled(overconfident, t / 1.1))


def test_ece_by_hand():
    labels = np.array([1, 0, 1, 1])
    p = np.array([0.9, 0.9, 0.2, 0.2])  # two bins: (0.9: half positive), (0.2: all positive)
    assert calibration.expected_calibration_error(labels, p, bins=10) == pytest.approx(
        0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.2)
    )


def test_softmax_temperature_matches_numpy():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    z = np.log(p) / 2.0
    expected = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    np.testing.assert_allclose(calibration.apply_temperature(p, 2.0), expected, atol=1e-12)
    layer = ProbabilityTemperature(2.0)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(p.astype("float32"))), expected, atol=1e-6
    )


def test_sensitivity_threshold_and_bootstrap():
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(300), np.ones(700)].astype(int)
    scores = np.r_[rng.normal(0, 1, 300), rng.normal(2, 1, 700)]
    cut = metrics.sensitivity_threshold(labels, scores, 0.95)
    m = metrics.binary_measures(labels, scores, cut)
    assert m["sensitivity"] >= 0.95
    # The most specific such cut: any higher distinct score loses the target.
    higher = np.sort(scores[scores > cut])[0]
    assert metrics.binary_measures(labels, scores, higher + 1e-12)["sensitivity"] < 0.95
    ci = metrics.bootstrap_intervals(labels, scores, cut, samples=300, seed=0)
    point = {"auc": metrics.roc_auc(labels, scores), **m}
    for name, (lo, hi) in ci.items():
        assert lo <= point[name] <= hi, (name, lo, hi)
    # The specificity interval is as wide as the binomial one: 2 * 1.96 * sd over 300 negatives.
    spec = m["specificity"]
    width = 2 * 1.96 * np.sqrt(spec * (1 - spec) / 300)
    assert 0.8 * width < ci["specificity"][1] - ci["specificity"][0] < 1.2 * width
    assert ci == metrics.bootstrap_intervals(labels, scores, cut, samples=300, seed=0)


# ----------------------------------------------------------------- ensemble layers


def test_image_shift_matches_numpy_edge_padding():
    x = np.random.default_rng(0).random((2, 7, 6, 1)).astype("float32")
    for dx, dy in [(2, 0), (-2, 0), (0, 1), (0, -3), (1, -1)]:
        padded = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)), mode="edge")
        expected = padded[:, 3 - dy : 3 - dy + 7, 3 - dx : 3 - dx + 6]
        got = keras.ops.convert_to_numpy(ImageShift(dx, dy)(x))
        np.testing.assert_array_equal(got, expected, err_msg=str((dx, dy)))
    with pytest.raises(ValueError, match="dx must be an integer"):
        ImageShift(dx=1.5)


def _member(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="last_conv_block")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def test_ensemble_is_the_mean_of_its_members_and_survives_keras_round_trip(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (9, 12, 12, 1)).astype("float32")
    members = [_member(s) for s in range(3)]
    mean = np.mean([m.predict(x, verbose=0) for m in members], axis=0)
    ensemble = build_ensemble(members)
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), mean, atol=1e-6)
    ensemble.save(tmp_path / "e.keras")
    loaded = load_keras_model(tmp_path / "e.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), mean, atol=1e-6)
    assert [m.name for m in ensemble_members(loaded)] == ["member_0", "member_1", "member_2"]

    # With test-time shifts: the mean over (view, member) pairs, each view by NumPy.
    tta = build_ensemble([_member(s) for s in range(2)], tta=True, tta_shift=1, temperature=1.7)
    views = [x]
    for dx, dy in [(1, 0), (-1, 0), (0, 1), (0, -1)]:
        p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        views.append(p[:, 1 - dy : 13 - dy, 1 - dx : 13 - dx])
    raw = np.mean([m.predict(v, verbose=0) for v in views for m in ensemble_members(tta)], axis=0)
    expected = calibration.apply_temperature(raw, 1.7)
    np.testing.assert_allclose(tta.predict(x, verbose=0), expected, atol=1e-6)
    tta.save(tmp_path / "t.keras")
    np.testing.assert_allclose(
        load_keras_model(tmp_path / "t.keras").predict(x, verbose=0), expected, atol=1e-6
    )
    assert ensemble_info(tta) == {
        "members": 2,
        "tta_views": 5,
        "tta_shifts": [[1, 0], [-1, 0], [0, 1], [0, -1]],
        "temperature": 1.7,
    }


def test_tta_off_equals_the_plain_model():
    x = np.random.default_rng(1).integers(0, 256, (5, 12, 12, 1)).astype("float32")
    member = _member(4)
    expected = member.predict(x, verbose=0)
    np.testing.assert_array_equal(build_ensemble([member]).predict(x, verbose=0), expected)


def test_gradcam_of_identical_members_equals_the_single_model():
    x = np.random.default_rng(2).integers(0, 256, (4, 12, 12, 1)).astype("float32")
    single = _member(5)
    twin = _member(5)
    twin.set_weights(single.get_weights())
    cam_single, p_single = gradcam(single, x)
    cam_pair, p_pair = gradcam(build_ensemble([single, twin], temperature=2.0), x)
    np.testing.assert_allclose(cam_pair, cam_single, atol=1e-5)
    np.testing.assert_allclose(p_pair, calibration.apply_temperature(p_single, 2.0), atol=1e-6)


# ----------------------------------------------------------------- train --folds (real data)


@pytest.fixture(scope="module")
def cv_run(pneumoniamnist_npz, tmp_path_factory):
    cfg = tiny_config(
        pneumoniamnist_npz, folds=FOLDS, tta=True, epochs=2, max_train_examples=900, seed=3
    )
    run_dir = tmp_path_factory.mktemp("cv") / "run"
    report = train_folds(cfg, run_dir, verbose=0, tensorboard=False)
    return cfg, run_dir, report


def test_cv_threshold_and_figures_come_from_out_of_fold_predictions(cv_run, pneumoniamnist_npz):
    cfg, run_dir, report = cv_run
    data = load_npz_data(pneumoniamnist_npz)
    pooled = pool(subsample(data["train"], 900, cfg.seed), data["val"])
    oof = np.load(run_dir / OOF_FILE)
    np.testing.assert_array_equal(oof["label"], pooled.labels)
    np.testing.assert_array_equal(oof["fold"], stratified_folds(pooled.labels, FOLDS, cfg.seed))
    # Each image's prediction is its own fold model's, on an image that model never trained on.
    for f in range(FOLDS):
        held = oof["fold"] == f
        member = load_keras_model(fold_dir(run_dir, f))
        np.testing.assert_allclose(
            oof["probability_raw"][held],
            member.predict(pooled.images[held].astype("float32"), verbose=0),
            atol=1e-5,
        )
        fold_cfg = json.loads((fold_dir(run_dir, f) / "config.json").read_text())
        assert fold_cfg["folds"] == 1
    t = report["temperature"]
    np.testing.assert_allclose(
        oof["probability"], calibration.apply_temperature(oof["probability_raw"], t), atol=1e-12
    )
    scores = oof["probability"].reshape(-1)
    threshold = json.loads((run_dir / "threshold.json").read_text())
    assert threshold == {
        "threshold": metrics.youden_threshold(oof["label"], scores),
        "method": "youden_j",
        "split": "out_of_fold",
    }
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["auc"] == pytest.approx(metrics.roc_auc(oof["label"], scores))
    assert written["num_examples"] == len(pooled) and written["folds"] == FOLDS
    # The temperature minimises the NLL (T = 1 is among those it tried).
    assert written["nll"] <= written["nll_before_calibration"] + 1e-9
    lo, hi = written["intervals_95"]["auc"]
    assert lo <= written["auc"] <= hi
    for name in ("roc_oof.png", "confusion_matrix_oof.png"):
        assert (run_dir / "plots" / name).stat().st_size > 1000


def test_cv_model_is_the_ensemble_of_the_fold_models(cv_run, pneumoniamnist_npz):
    cfg, run_dir, report = cv_run
    model = load_keras_model(run_dir)
    x = load_npz_data(pneumoniamnist_npz)["val"].images[:16].astype("float32")
    members = [load_keras_model(fold_dir(run_dir, f)) for f in range(FOLDS)]
    expected = calibration.apply_temperature(
        np.mean(
            [
                m.predict(keras.ops.convert_to_numpy(ImageShift(dx, dy)(x)), verbose=0)
                for dx, dy in [(0, 0), (2, 0), (-2, 0), (0, 2), (0, -2)]
                for m in members
            ],
            axis=0,
        ),
        report["temperature"],
    )
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-6)
    assert ensemble_info(model)["members"] == FOLDS and ensemble_info(model)["tta_views"] == 5


def test_cv_export_equals_the_ensemble_and_records_tta(cv_run, pneumoniamnist_npz, tmp_path):
    import tensorflow as tf

    from apps.medical_cnn.export import MODEL_INFO_FILE, export

    _, run_dir, report = cv_run
    version = export(run_dir, tmp_path / "base")
    info = json.loads((version / MODEL_INFO_FILE).read_text())
    assert info["members"] == FOLDS and info["tta_views"] == 5
    assert info["temperature"] == report["temperature"]
    assert info["threshold"] == report["threshold"]
    x = load_npz_data(pneumoniamnist_npz)["val"].images[:8].astype("float32")
    served = tf.saved_model.load(str(version)).signatures["predict_pixels"](pixels=tf.constant(x))
    expected = load_keras_model(run_dir).predict(x, verbose=0)[:, 0]
    np.testing.assert_allclose(served["probability"].numpy(), expected, atol=1e-6)


def test_cv_rerun_skips_finished_folds_and_refuses_a_finished_run(cv_run):
    cfg, run_dir, report = cv_run
    with pytest.raises(RunDirError, match="already holds a finished run"):
        train_folds(cfg, run_dir, verbose=0, tensorboard=False)
    # Lose the final files, as after a crash between the last fold and the ensemble:
    # the rerun trains nothing again and writes the same figures.
    stamps = [(fold_dir(run_dir, f) / "model.keras").stat().st_mtime_ns for f in range(FOLDS)]
    for name in ("metrics.json", "model.keras", "threshold.json"):
        (run_dir / name).unlink()
    again = train_folds(cfg, run_dir, verbose=0, tensorboard=False)
    assert [
        (fold_dir(run_dir, f) / "model.keras").stat().st_mtime_ns for f in range(FOLDS)
    ] == stamps
    for key in ("auc", "threshold", "temperature", "ece"):
        assert again[key] == report[key]
    with pytest.raises(RunDirError, match="different config"):
        (run_dir / "metrics.json").unlink()
        train_folds(dataclasses.replace(cfg, tta=False), run_dir, verbose=0, tensorboard=False)


def test_config_refuses_tta_without_folds_and_bad_targets():
    from apps.medical_cnn.config import get_config

    with pytest.raises(UserError, match="needs folds >= 2"):
        dataclasses.replace(get_config("default"), tta=True)
    with pytest.raises(UserError, match="target_sensitivity must be in"):
        dataclasses.replace(get_config("default"), target_sensitivity=1.5)
    with pytest.raises(UserError, match="threshold_method must be one of"):
        dataclasses.replace(get_config("default"), threshold_method="f1")

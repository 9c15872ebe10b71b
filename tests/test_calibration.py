"""Calibration metrics and temperature scaling (jtl.evaluation.calibration), and their place
in a run."""

import numpy as np
import pytest

from jtl.evaluation import calibration


def _calibrated(n=20000, classes=5, seed=0):
    """Logits whose softmax is the true class distribution the labels are drawn from."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, size=(n, classes))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return logits, labels


def test_ece_is_near_zero_for_perfectly_calibrated_predictions():
    logits, labels = _calibrated()
    m = calibration.metrics(logits, labels)
    assert m["ece"] < 0.015
    # Over-confident (logits x3) and under-confident (/3) versions are clearly miscalibrated.
    assert calibration.metrics(3 * logits, labels)["ece"] > 0.08
    assert calibration.metrics(logits / 3, labels)["ece"] > 0.08


def test_ece_matches_torchmetrics():
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.functional.classification")
    rng = np.random.default_rng(3)
    for classes in (2, 10):
        logits = rng.normal(0, 1.5, size=(997, classes))
        labels = rng.integers(0, classes, 997)
        probs = np.exp(calibration._log_probs(logits))
        # torchmetrics' bins are left-closed, ours (Guo et al.) right-closed: no confidence may
        # lie exactly on an edge (continuous random logits never do; 1.0 exactly would).
        edges = probs.max(1) * 15
        assert not np.any(edges == np.floor(edges))
        want = tm.multiclass_calibration_error(
            torch.tensor(probs), torch.tensor(labels), num_classes=classes, n_bins=15, norm="l1"
        )
        assert calibration.ece(probs, labels) == pytest.approx(float(want), abs=1e-6)


def test_brier_and_nll_by_hand():
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.25, 0.5, 0.25]]))
    labels = np.array([0, 2])
    assert calibration.nll(logits, labels) == pytest.approx(-(np.log(0.7) + np.log(0.25)) / 2)
    brier = ((0.3**2 + 0.2**2 + 0.1**2) + (0.25**2 + 0.5**2 + 0.75**2)) / 2
    assert calibration.brier(np.exp(logits), labels) == pytest.approx(brier)


def test_temperature_scaling_never_raises_validation_nll_and_t1_changes_nothing():
    logits, labels = _calibrated(n=3000, seed=1)
    for scale in (0.2, 1.0, 4.0):
        z = scale * logits
        t = calibration.fit_temperature(z, labels)
        assert calibration.nll(z, labels, t) <= calibration.nll(z, labels) + 1e-12
        if scale != 1.0:  # a mis-scaled model gets its scale back, roughly
            assert t == pytest.approx(scale, rel=0.15)
    assert calibration.metrics(logits, labels, 1.0) == calibration.metrics(logits, labels)
    fields = calibration.summary_fields({"val": (logits, labels), "test": (logits, labels)})
    assert fields["val_nll_ts"] <= fields["val_nll"]
    assert sum(fields["test_reliability"]["count"]) == len(labels)
    # An already-calibrated model: T stays near 1 and ECE does not get worse by much.
    assert fields["temperature"] == pytest.approx(1.0, abs=0.1)
    empty = calibration.fit_temperature(np.zeros((0, 3)), np.zeros(0, int))
    assert empty == 1.0 and calibration.summary_fields({"test": (logits, labels)}) == {}


def test_a_run_reports_calibration_and_each_shift_with_its_temperature(tmp_path):
    import json

    from jtl import config as config_lib
    from jtl.run.train import train
    from jtl.runtime.errors import DataError
    from tests.test_train import TINY

    cfg = config_lib.load_config(
        f"{TINY}:steps=30", ["eval_shifts=('digits|noise(0.4)', 'digits|rotate(90)')"]
    )
    s = train(cfg, tmp_path / "run")
    assert s["temperature"] > 0 and 0 <= s["test_ece"] <= 1 and s["val_nll_ts"] <= s["val_nll"]
    assert s["test_nll"] == pytest.approx(s["test_loss"], rel=1e-4)  # the same quantity
    assert set(s["shifts"]) == {"digits|noise(0.4)", "digits|rotate(90)"}
    for shift in s["shifts"].values():
        assert shift["examples"] == 450 and 0 <= shift["ece"] <= 1  # digits test split
    # Rotating digits by 90 degrees costs accuracy: a real shift.
    assert s["shifts"]["digits|rotate(90)"]["accuracy"] < s["test_accuracy"] - 0.1
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["shifts"] == s["shifts"]
    # A shift that is the source's own training data, or with other classes, is refused.
    source = tmp_path / "run"
    for shifts, match in (
        ("digits", "the source's own training data"),
        ("digits|classes(0-4)", "keeps the label space"),
    ):
        bad = config_lib.load_config(
            f"{TINY}:steps=2,dataset=digits|invert",
            [f"init.checkpoint={source}", "strategy=finetune_full", f"eval_shifts={shifts!r}"],
        )
        with pytest.raises(DataError, match=match):
            train(bad, tmp_path / f"bad{len(match)}")

"""`jtl advise` end to end on a tiny source: scores computed, pretrained beats random init."""

from pathlib import Path

from jtl import config as config_lib
from jtl.advisor import advise

TINY = str(Path(__file__).resolve().parent.parent / "configs" / "tiny.py")


def test_advise_prefers_trained_features(tmp_path):
    from jtl.run.train import train

    train(config_lib.load_config(f"{TINY}:steps=60"), tmp_path / "src")
    out = advise.advise(tmp_path / "src", "digits", sample=400)
    for key in ("logme", "leep", "nce", "h_score", "knn_accuracy", "probe_accuracy"):
        assert key in out["pretrained"] and key in out["random_init"]
    assert out["pretrained"]["probe_accuracy"] > out["random_init"]["probe_accuracy"]
    assert out["pretrained"]["leep"] > out["random_init"]["leep"]
    assert out["recommendation"] != "scratch"
    assert any("examples per class" in r for r in out["reasons"])


def test_recommendation_is_scratch_when_features_are_no_better_than_random():
    same = {"probe_accuracy": 0.5, "logme": -1.0, "knn_accuracy": 0.4}
    strategy, reasons = advise.recommend(same, dict(same), per_class=50, chance=0.1)
    assert strategy == "scratch" and "no better than random" in reasons[-1]


def test_knn_gap_counts_when_the_probe_split_is_noisy():
    random = {"probe_accuracy": 0.93, "logme": 0.25, "knn_accuracy": 0.82}
    trained = {"probe_accuracy": 0.94, "logme": 0.56, "knn_accuracy": 0.90}
    assert advise.recommend(trained, random, per_class=20, chance=0.1)[0] != "scratch"
    trained["logme"] = 0.2  # LogME must agree
    assert advise.recommend(trained, random, per_class=20, chance=0.1)[0] == "scratch"

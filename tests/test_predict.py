"""`jtl predict`/`jtl advise` feed each source its own input scaling (recorded in import.json)."""

import json

import jax
import numpy as np
import pytest

from jtl.weights import source_model
from jtl.weights.image_recipes import IMAGENET_MEAN, IMAGENET_STD, preprocess_torchvision


def _import_json(tmp_path, model, **extra):
    d = tmp_path / model
    d.mkdir()
    meta = {"model": model, "model_kwargs": {"num_classes": 3}, "image_size": 32,
            "class_names": ["a", "b", "c"], **extra}  # fmt: skip
    (d / "import.json").write_text(json.dumps(meta))
    return d


def test_preprocess_recorded_or_derived_from_model_name(tmp_path):
    assert source_model.describe(_import_json(tmp_path, "resnet18")).preprocess == "torchvision"
    assert source_model.describe(_import_json(tmp_path, "resnet50")).preprocess == "torchvision"
    lite = source_model.describe(_import_json(tmp_path, "efficientnet_lite0"))
    assert lite.preprocess == "lite0"
    rec = source_model.describe(_import_json(tmp_path, "bert", preprocess="wordpiece"))
    assert rec.is_text
    with pytest.raises(ValueError, match="text model"):
        source_model.prepare_image(rec, np.zeros((8, 8, 3), np.uint8))


def test_importer_records_preprocess():
    from jtl.interop.importer import IMPORTERS

    assert IMPORTERS["resnet18"].preprocess == "torchvision"
    assert IMPORTERS["resnet50"].preprocess == "torchvision"
    assert IMPORTERS["efficientnet_lite0"].preprocess == "lite0"


def test_torchvision_scaling_is_imagenet_mean_std():
    img = np.full((40, 60, 3), 200, np.uint8)
    x = preprocess_torchvision(img, 32)
    assert x.shape == (32, 32, 3)
    np.testing.assert_allclose(x[5, 5], (200 / 255 - IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-5)
    # Lite0 and jtl-run scalings differ from it: the point of recording which one applies.
    info = source_model.SourceModel("import", "efficientnet_lite0", {}, 3, [], 32, 3, "lite0")
    np.testing.assert_allclose(source_model.prepare_image(info, img)[5, 5], (200 - 127) / 128)
    # advise's batch rescaling from jtl's [-1, 1] agrees with the per-image path
    tv = source_model.SourceModel("import", "resnet18", {}, 3, [], 32, 3, "torchvision")
    batch = np.full((1, 32, 32, 3), (200 - 127.5) / 127.5, np.float32)
    np.testing.assert_allclose(source_model.rescale_batch(tv, batch)[0, 0, 0], x[5, 5], rtol=1e-5)


def test_predict_uses_torchvision_normalization_for_imported_resnet(tmp_path):
    from jtl.models import get_model
    from jtl.weights.checkpoint import save_variables
    from jtl.weights.predict import predict

    model = get_model("resnet18", 3)
    x0 = np.zeros((1, 32, 32, 3), np.float32)
    v = jax.jit(lambda r: model.init(r, x0, train=False))(jax.random.PRNGKey(0))
    v = jax.tree.map(np.asarray, v)
    rng = np.random.default_rng(0)
    v["params"]["head"]["kernel"] = rng.standard_normal(v["params"]["head"]["kernel"].shape)
    v["params"]["head"]["kernel"] = v["params"]["head"]["kernel"].astype(np.float32)
    # An import written before `preprocess` was recorded: derived from the model name.
    meta = {"model": "resnet18", "model_kwargs": {"num_classes": 3}, "image_size": 32,
            "class_names": ["a", "b", "c"]}  # fmt: skip
    save_variables(tmp_path / "rn", v, meta)
    img = rng.integers(0, 256, (48, 40, 3)).astype(np.uint8)
    got = dict(predict(tmp_path / "rn", img, top=3))

    def probs(x):
        logits = np.asarray(model.apply(v, x[None], train=False))[0]
        p = np.exp(logits - logits.max())
        return dict(zip("abc", p / p.sum(), strict=True))

    want = probs(preprocess_torchvision(img, 32))
    for k in "abc":
        assert got[k] == pytest.approx(want[k], rel=1e-4)
    from jtl.weights.image_recipes import preprocess_lite0

    wrong = probs(preprocess_lite0(img, 32))
    assert max(abs(got[k] - wrong[k]) for k in "abc") > 1e-3
    # A run's temperature (summary.json) scales the logits; --no-temperature keeps them raw.
    import json

    from tests.helpers import fake_summary

    (tmp_path / "rn" / "summary.json").write_text(json.dumps(fake_summary(temperature=2.5)))
    scaled = dict(predict(tmp_path / "rn", img, top=3))
    raw = dict(predict(tmp_path / "rn", img, top=3, calibrated=False))
    x = preprocess_torchvision(img, 32)
    logits = np.asarray(model.apply(v, x[None], train=False), np.float64)[0] / 2.5
    p = np.exp(logits - logits.max())
    for k, want_k in zip("abc", p / p.sum(), strict=True):
        assert scaled[k] == pytest.approx(want_k, rel=1e-4)
        assert raw[k] == pytest.approx(want[k], rel=1e-4)

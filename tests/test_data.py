"""Data sets and pipelines: builders, splits, determinism, resume, sharding, clear errors."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jtl.data import pipeline, registry, sources, subsets


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path / "cache"))
    return tmp_path


def _npz(path, n=60, classes=3, shape=(10, 12), seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = (rng.random((n, *shape)) * 255).astype(np.uint8)
    x[:, 0, 0] = y * 50  # a label-dependent pixel, so records can be traced
    np.savez(path, x=x, y=y)
    return x, y


def test_npz_dataset(data_dir):
    x, y = _npz(data_dir / "toy.npz")
    ds = registry.load(f"npz:{data_dir / 'toy.npz'}")
    assert ds.num_classes == 3 and ds.image_shape == (10, 12, 1)
    assert len(ds.splits["train"]) + len(ds.splits["test"]) == 60
    rec = ds.splits["train"][0]
    assert rec["image"].dtype == np.uint8 and rec["image"].shape == (10, 12, 1)
    assert rec["image"][0, 0, 0] == rec["label"] * 50
    # The test split holds every class (stratified hold-out).
    assert set(ds.labels("test")) == {0, 1, 2}


def test_npz_bad_keys(data_dir):
    np.savez(data_dir / "bad.npz", images=np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="'x'.*'y'"):
        registry.load(f"npz:{data_dir / 'bad.npz'}")


def test_image_folder_dataset(data_dir):
    root = data_dir / "imgs"
    for c, color in (("cat", 30), ("dog", 200)):
        (root / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((9, 7, 3), color + i, np.uint8)).save(root / c / f"{i}.png")
    Image.fromarray(np.full((20, 20, 3), 99, np.uint8)).save(root / "dog" / "big.png")
    ds = registry.load(f"folder:{root}")
    assert ds.class_names == ["cat", "dog"]
    assert ds.image_shape == (9, 7, 3)  # most common size; the odd one is resized
    assert len(ds.splits["train"]) + len(ds.splits["test"]) == 11


def test_real_digits_builder():
    sources.fetch("digits")
    ds = registry.load("digits")
    assert ds.num_classes == 10 and ds.image_shape == (8, 8, 1)
    assert (len(ds.splits["train"]), len(ds.splits["test"])) == (1347, 450)
    assert ds.builder.info.supervised_keys == ("image", "label")
    assert max(int(ds.splits["train"][i]["image"].max()) for i in range(50)) > 200


@pytest.mark.needs_data
@pytest.mark.parametrize("name,first_class", [("mnist", "0"), ("fashion_mnist", "T-shirt/top")])
def test_real_mnist_family(name, first_class):
    if not sources.is_fetched(name):
        pytest.skip(f"run `jtl data fetch {name}` first")
    ds = registry.load(name)
    assert (len(ds.splits["train"]), len(ds.splits["test"])) == (60000, 10000)
    assert ds.class_names[0] == first_class
    assert np.bincount(ds.labels("test")).min() >= 890


def test_missing_source_names_the_fetch_command(data_dir):
    with pytest.raises(sources.MissingSourceError, match="jtl data fetch mnist"):
        registry.load("mnist")


def test_unknown_dataset(data_dir):
    with pytest.raises(registry.UnknownDatasetError, match="no_such_set.*mnist"):
        registry.load("no_such_set")


class JtlFakeCatalog(tfds.core.GeneratorBasedBuilder):
    """Stands in for a tfds catalog data set (registered by name, loaded by name)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "img": tfds.features.Tensor(shape=(4, 4, 3), dtype=np.uint8),
                    "target": tfds.features.ClassLabel(num_classes=2),
                }
            ),
            supervised_keys=("img", "target"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(20), "test": self._generate_examples(6)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"img": np.full((4, 4, 3), i, np.uint8), "target": i % 2}


def test_catalog_name_goes_through_tfds_builder(data_dir):
    ds = registry.load("jtl_fake_catalog")
    assert ds.num_classes == 2 and ds.image_shape == (4, 4, 3)
    assert set(ds.splits["train"][3]) == {"image", "label"}


def test_nested_stratified_subsets():
    labels = np.repeat(np.arange(10), 100)
    idx, _ = subsets.train_val_split(labels, 0.1, seed=0)
    s1 = subsets.nested_subset(labels, idx, fraction=0.01, seed=3)
    s10 = subsets.nested_subset(labels, idx, fraction=0.1, seed=3)
    s100 = subsets.nested_subset(labels, idx, fraction=1.0, seed=3)
    assert set(s1) <= set(s10) <= set(s100) == set(idx)
    assert np.all(np.bincount(labels[s10]) == 9)
    p5 = subsets.nested_subset(labels, idx, per_class=5, seed=3)
    p20 = subsets.nested_subset(labels, idx, per_class=20, seed=3)
    assert set(p5) <= set(p20) and np.all(np.bincount(labels[p5]) == 5)
    other = subsets.nested_subset(labels, idx, per_class=5, seed=4)
    assert set(other) != set(p5)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_fraction_outside_unit_interval(fraction):
    with pytest.raises(ValueError, match=r"outside \(0, 1\]"):
        subsets.nested_subset(np.zeros(10), np.arange(10), fraction=fraction)


def test_val_split_disjoint_and_stratified():
    labels = np.repeat(np.arange(4), 50)
    tr, va = subsets.train_val_split(labels, 0.2, seed=1)
    assert not set(tr) & set(va) and len(tr) + len(va) == 200
    assert np.all(np.bincount(labels[va]) == 10)
    folds = subsets.kfold_splits(labels, tr, k=4, seed=0)
    assert sorted(np.concatenate([v for _, v in folds]).tolist()) == sorted(tr.tolist())


def _source(n=50):
    x = np.zeros((n, 6, 6, 1), np.uint8)
    x[:, 0, 0, 0] = np.arange(n)
    return registry.ArraySource(x, np.arange(n) % 5)


def _take(it, k):
    return [next(it) for _ in range(k)]


def test_train_batches_deterministic_resumable_and_sharded():
    src, idx = _source(), np.arange(50)
    kw = dict(batch_size=8, image_size=6, channels=1, augment="crop(1)|flip")
    a = _take(pipeline.train_batches(src, idx, seed=1, **kw), 12)
    b = _take(pipeline.train_batches(src, idx, seed=1, **kw), 12)
    c = _take(pipeline.train_batches(src, idx, seed=2, **kw), 12)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
    assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(a, c, strict=True))
    resumed = _take(pipeline.train_batches(src, idx, seed=1, start_step=7, **kw), 5)
    for x, y in zip(a[7:], resumed, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
    halves = [
        _take(pipeline.train_batches(src, idx, seed=1, process_index=p, process_count=2, **kw), 3)
        for p in range(2)
    ]
    for k in range(3):
        joined = np.concatenate([halves[0][k]["image"], halves[1][k]["image"]])
        np.testing.assert_array_equal(joined, a[k]["image"])
    # Every example appears once per epoch (50 examples: epoch 1 fills batches 0..5 and part of 6).
    ids = np.concatenate(
        [
            np.round(bt["label"])
            for bt in _take(
                pipeline.train_batches(src, idx, seed=1, batch_size=10, image_size=6, channels=1), 5
            )
        ]
    )
    assert np.all(np.bincount(ids, minlength=5) == 10)


def test_eval_batches_pad_and_mask():
    src = _source(23)
    batches = list(
        pipeline.eval_batches(src, np.arange(23), batch_size=10, image_size=6, channels=1)
    )
    assert len(batches) == 3 and batches[-1]["mask"].sum() == 3
    ids = np.concatenate([b["image"][:, 0, 0, 0][b["mask"] > 0] for b in batches])
    np.testing.assert_allclose(ids, (np.arange(23) - 127.5) / 127.5, atol=1e-6)


def test_resize_and_channel_conversion():
    x, _ = pipeline.load_arrays(_source(4), [0, 1], image_size=32, channels=3)
    assert x.shape == (2, 32, 32, 3) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0


def test_unknown_augmentation():
    with pytest.raises(ValueError, match="valid ops"):
        next(
            pipeline.train_batches(
                _source(),
                np.arange(5),
                batch_size=2,
                seed=0,
                image_size=6,
                channels=1,
                augment="crop(2)|blur",
            )
        )

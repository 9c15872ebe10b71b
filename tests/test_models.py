"""jtl.models: shapes, params-tree contract, norms, init, mixed precision, a tiny training run."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jtl.models import Classifier, get_model, list_models, param_count
from jtl.models.norm import GroupNorm, StdConv, make_norm, num_groups, weight_standardize

NORMS = ("batch", "group", "group_ws")
# name -> (kwargs, input size, feature dim, number of blocks after the stem)
MODELS = {
    "cnn_small": ({}, 16, 128, 2),
    "resnet20": ({}, 16, 64, 9),
    "resnet18": ({}, 32, 512, 8),
    "resnet50": ({}, 32, 2048, 16),
}


def _x(b=2, hw=16, c=3, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, hw, hw, c)), jnp.float32)


def _shapes(model, x):
    return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)


def _init(model, x):
    """Jitted init with an rbg key: XLA compiles threefry slowly on CPU (~4x the whole init)."""
    return jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)


def _apply(model, v, x, **kwargs):
    return jax.jit(functools.partial(model.apply, **kwargs))(v, x)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", list(MODELS))
def test_shapes_and_params_tree(name, norm):
    kwargs, hw, dim, n_blocks = MODELS[name]
    model = get_model(name, 7, norm=norm, **kwargs)
    x = jax.ShapeDtypeStruct((3, hw, hw, 3), jnp.float32)
    v = _shapes(model, x)
    logits = jax.eval_shape(model.apply, v, x)
    feats = jax.eval_shape(lambda v, x: model.apply(v, x, method="features"), v, x)
    assert (logits.shape, logits.dtype) == ((3, 7), jnp.float32)
    assert (feats.shape, feats.dtype) == ((3, dim), jnp.float32)
    assert set(v["params"]) == {"backbone", "head"}
    assert set(v["params"]["head"]) == {"kernel", "bias"}
    assert v["params"]["head"]["kernel"].shape == (dim, 7)
    names = model.block_names()
    assert names == ["stem"] + [f"block{i}" for i in range(1, n_blocks + 1)]
    assert set(v["params"]["backbone"]) == set(names)  # eval_shape sorts keys: compare as sets
    assert ("batch_stats" in v) == (norm == "batch")
    if norm == "batch":
        assert set(v["batch_stats"]) == {"backbone"}


@pytest.mark.parametrize("name", ["resnet20", "cnn_small"])
def test_block_names_match_params_order(name):
    model = get_model(name, 10)
    order = {}

    def init(x):  # the dict flax builds, seen while tracing, before jax sorts its keys
        v = model.init(jax.random.PRNGKey(0), x)
        order.update(top=list(v["params"]), backbone=list(v["params"]["backbone"]))
        return v

    jax.eval_shape(init, jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))
    assert order == {"top": ["backbone", "head"], "backbone": model.block_names()}


def test_param_counts():
    def counts(name, hw, **kw):
        model = get_model(name, 10, **kw)
        p = _shapes(model, jax.ShapeDtypeStruct((1, hw, hw, 3), jnp.float32))["params"]
        return param_count(p["backbone"]), param_count(p["head"])

    # Backbones match torchvision's resnet18/50 without the fc layer exactly.
    assert counts("resnet18", 32) == (11_176_512, 512 * 10 + 10)
    assert counts("resnet50", 32) == (23_508_032, 2048 * 10 + 10)
    assert counts("resnet18", 32, stem="cifar")[0] == 11_176_512 - 64 * 3 * (49 - 9)
    b, h = counts("resnet20", 32)
    assert 0.26e6 < b < 0.28e6 and h == 650
    b, _ = counts("cnn_small", 28)
    assert 0.08e6 < b < 0.12e6
    assert counts("cnn_small", 28, width=2.0)[0] > 3.5 * b


def test_head_is_zero_initialized():
    model = get_model("cifar_resnet", 5, depth=8, norm="group")
    v = _init(model, _x(1, 8))
    logits = _apply(model, v, _x(4, 8, seed=1))
    np.testing.assert_array_equal(logits, np.zeros((4, 5)))
    feats = _apply(model, v, _x(4, 8, seed=1), method="features")
    assert feats.shape == (4, 64) and float(jnp.abs(feats).sum()) > 0


def test_batch_stats_update_only_in_train_mode():
    model = get_model("cnn_small", 3, norm="batch")
    x = _x(4, 8)
    v = _init(model, x[:1])
    logits, new = _apply(model, v, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (4, 3)
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), v["batch_stats"], new["batch_stats"])
    assert all(jax.tree.leaves(moved)), moved
    _, same = _apply(model, v, x, train=False, mutable=["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, same["batch_stats"], v["batch_stats"])


def test_inference_blocks_keep_their_stats():
    model = get_model("cnn_small", 3, norm="batch")
    x = _x(4, 8)
    v = _init(model, x[:1])
    _, new = _apply(model, v, x, train=True, inference_blocks=("stem",), mutable=["batch_stats"])
    bs, nbs = v["batch_stats"]["backbone"], new["batch_stats"]["backbone"]
    jax.tree.map(np.testing.assert_array_equal, nbs["stem"], bs["stem"])
    assert not np.allclose(nbs["block1"]["norm"]["mean"], bs["block1"]["norm"]["mean"])


@pytest.mark.parametrize("momentum", [0.99, 0.5])
def test_lite0_bn_momentum(momentum):
    """Every Lite0 BatchNorm keeps `momentum` of its running mean per train step (default 0.99)."""
    kw = {} if momentum == 0.99 else {"bn_momentum": momentum}
    model = get_model("efficientnet_lite0", 3, **kw)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    v = _init(model, x[:1])
    _, new = _apply(model, v, x, train=True, mutable=["batch_stats"])
    old_stem = v["batch_stats"]["backbone"]["stem"]["bn"]["mean"]
    new_stem = new["batch_stats"]["backbone"]["stem"]["bn"]["mean"]
    conv = {"params": {"kernel": v["params"]["backbone"]["stem"]["conv"]["kernel"]}}
    pre = nn.Conv(32, (3, 3), (2, 2), padding=((0, 1), (0, 1)), use_bias=False).apply(conv, x)
    batch_mean = jnp.mean(pre, axis=(0, 1, 2))
    expected = momentum * old_stem + (1 - momentum) * batch_mean
    np.testing.assert_allclose(new_stem, expected, rtol=1e-4, atol=1e-5)
    dw = new["batch_stats"]["backbone"]["block5"]["dw_bn"]["mean"]
    assert not np.allclose(dw, v["batch_stats"]["backbone"]["block5"]["dw_bn"]["mean"])


def test_group_norm_needs_no_batch_stats():
    model = get_model("cnn_small", 3, norm="group_ws")
    v = _init(model, _x(1, 8))
    assert set(v) == {"params"}
    assert _apply(model, v, _x(2, 8), train=True).shape == (2, 3)


def test_zero_init_residual():
    for zero in (False, True):
        model = get_model("cifar_resnet", 10, depth=8, norm="batch", zero_init_residual=zero)
        p = _init(model, _x(1, 8))
        for i in range(1, 4):
            scale = p["params"]["backbone"][f"block{i}"]["norm2"]["scale"]
            np.testing.assert_array_equal(scale, 0.0 if zero else 1.0)
        np.testing.assert_array_equal(p["params"]["backbone"]["block1"]["norm1"]["scale"], 1.0)


def test_num_groups():
    channels = (64, 256, 2048, 16, 32, 48, 3, 2)
    assert [num_groups(c) for c in channels] == [32, 32, 32, 8, 16, 24, 1, 1]
    for c in range(1, 300):
        g = num_groups(c)
        assert c % g == 0 and g <= 32 and (c // g >= 2 or g == 1)


def test_group_norm_matches_flax():
    x = _x(2, 5, 16)
    mine = GroupNorm()
    ref = nn.GroupNorm(num_groups=8, epsilon=1e-5)
    y = mine.apply(mine.init(jax.random.PRNGKey(0), x), x)
    y_ref = ref.apply(ref.init(jax.random.PRNGKey(0), x), x)
    np.testing.assert_allclose(y, y_ref, atol=1e-5)


def test_stdconv_standardizes_kernel():
    w = jnp.asarray(np.random.default_rng(0).normal(3.0, 5.0, size=(3, 3, 4, 6)), jnp.float32)
    ws = weight_standardize(w, axis=(0, 1, 2))
    np.testing.assert_allclose(ws.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(ws.std(axis=(0, 1, 2)), 1.0, atol=1e-3)
    x = _x(2, 6, 4)
    conv = StdConv(6, (3, 3), use_bias=False)
    v = {"params": {"kernel": w}}
    ref = nn.Conv(6, (3, 3), use_bias=False).apply({"params": {"kernel": ws}}, x)
    np.testing.assert_allclose(conv.apply(v, x), ref, atol=1e-4)
    # The factory picks StdConv only for group_ws; "none" convs carry a bias.
    assert make_norm("group_ws")[0].func is StdConv and make_norm("group")[0].func is nn.Conv
    assert (
        make_norm("none")[0].keywords["use_bias"] and not make_norm("batch")[0].keywords["use_bias"]
    )


@pytest.mark.parametrize("init", ["he", "torch"])
def test_conv_init_variance(init):
    """He: 2 / fan_out (ResNets, init="he"); torch: 1 / (3 fan_in), cnn_small's default."""
    model = get_model("cnn_small", 10, norm="batch", width=2.0, init=init)
    p = _init(model, _x(1, 8))["params"]["backbone"]
    checked = 0
    for name in model.block_names():
        k = np.asarray(p[name]["conv"]["kernel"])
        if k.size < 20_000:
            continue
        fan_out = k.shape[0] * k.shape[1] * k.shape[3]
        fan_in = k.shape[0] * k.shape[1] * k.shape[2]
        expected = 2.0 / fan_out if init == "he" else 1.0 / (3 * fan_in)
        assert k.var() == pytest.approx(expected, rel=0.05), name
        assert abs(k.mean()) < 0.01
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize("name,kw", [("cnn_small", {}), ("cifar_resnet", {"depth": 8})])
def test_bfloat16_compute(name, kw):
    x = _x(2, 8)
    m32 = get_model(name, 4, norm="batch", **kw)
    m16 = get_model(name, 4, norm="batch", dtype="bfloat16", **kw)
    v, v16 = _init(m32, x), _init(m16, x)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(v16))
    jax.tree.map(np.testing.assert_array_equal, v, v16)  # same params; dtype is compute only
    v["params"]["head"]["kernel"] = jnp.asarray(
        np.random.default_rng(1).normal(size=v["params"]["head"]["kernel"].shape), jnp.float32
    )
    l32, l16 = _apply(m32, v, x), _apply(m16, v, x)
    assert l16.dtype == jnp.float32
    assert _apply(m16, v, x, method="features").dtype == jnp.float32
    rel = float(jnp.linalg.norm(l16 - l32) / jnp.linalg.norm(l32))
    assert rel < 0.05, rel


def test_cnn_small_loss_decreases():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 12, 12, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 4, size=16), jnp.int32)
    model = get_model("cnn_small", 4, norm="batch")
    v = _init(model, x[:1])
    tx = optax.sgd(0.05, momentum=0.9)
    params, stats = v["params"], v["batch_stats"]
    opt = tx.init(params)

    def loss_fn(params, stats):
        logits, new = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new

    @jax.jit
    def step(params, stats, opt):
        (loss, new), g = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), new["batch_stats"], opt, loss

    losses = []
    for _ in range(20):
        params, stats, opt, loss = step(params, stats, opt)
        losses.append(float(loss))
    assert losses[0] == pytest.approx(np.log(4), rel=1e-4)  # zero head: uniform predictions
    assert losses[-1] < 0.5 * losses[0], losses


def test_norm_none_for_cnn_small_only():
    model = get_model("cnn_small", 3, norm="none")
    v = _init(model, _x(1, 8))
    assert set(v) == {"params"}
    assert set(v["params"]["backbone"]["stem"]) == {"conv"}
    assert "bias" in v["params"]["backbone"]["stem"]["conv"]
    with pytest.raises(ValueError, match="valid norms"):
        get_model("resnet20", 3, norm="none")


def test_errors():
    with pytest.raises(ValueError, match="valid models: .*resnet20"):
        get_model("resnet21", 10)
    with pytest.raises(ValueError, match="valid norms: batch, group, group_ws"):
        get_model("resnet18", 10, norm="layer")
    with pytest.raises(ValueError, match="valid norms"):
        make_norm("instance")
    with pytest.raises(ValueError, match=r"unknown kwargs \['nrom'\]"):
        get_model("cnn_small", 10, nrom="group")
    with pytest.raises(ValueError, match="unknown kwargs"):
        get_model("resnet20", 10, stem="imagenet")  # CIFAR nets have a fixed stem
    with pytest.raises(ValueError, match="valid stems"):
        get_model("resnet50", 10, stem="tiny")
    with pytest.raises(ValueError, match="6n\\+2"):
        get_model("cifar_resnet", 10, depth=21)
    assert get_model("cifar_resnet", 10, depth=14).block_names()[-1] == "block6"


def test_registry():
    names = list_models()
    assert {"cnn_small", "resnet20", "resnet18", "resnet50"} <= set(names)
    model = get_model("resnet20", 10, width=0.5)
    assert isinstance(model, Classifier)
    assert model.num_classes == 10 and model.backbone.width == 0.5


@pytest.mark.parametrize("shape, window, pad", [
    ((3, 8, 8, 4), (2, 2), "VALID"),
    ((2, 6, 9, 3), (2, 3), ((0, 0), (0, 0))),
    ((2, 7, 7, 3), (2, 2), "VALID"),  # not divisible: nn.max_pool
    ((2, 8, 8, 3), (3, 3), ((1, 1), (1, 1))),  # overlapping + padded: nn.max_pool
])  # fmt: skip
def test_max_pool_matches_flax_values_and_untied_gradients(shape, window, pad):
    from jtl.models.pooling import max_pool

    # Distinct values: no ties, so both gradients route to the same element.
    x = jax.random.permutation(jax.random.PRNGKey(0), np.prod(shape)).reshape(shape) * 0.01
    strides = window if pad == "VALID" or pad == ((0, 0), (0, 0)) else (2, 2)
    ours = lambda v: jnp.sum(jnp.sin(max_pool(v, window, strides, pad)))  # noqa: E731
    ref = lambda v: jnp.sum(jnp.sin(nn.max_pool(v, window, strides=strides, padding=pad)))  # noqa: E731
    np.testing.assert_array_equal(
        max_pool(x, window, strides, pad), nn.max_pool(x, window, strides=strides, padding=pad)
    )
    np.testing.assert_allclose(jax.grad(ours)(x), jax.grad(ref)(x), rtol=1e-6, atol=1e-7)
    fast = tuple(window) == tuple(strides) and shape[1] % window[0] == 0
    fast = fast and shape[2] % window[1] == 0 and pad != ((1, 1), (1, 1))
    jaxpr = str(jax.make_jaxpr(jax.grad(ours))(x))
    assert ("select_and_scatter" in jaxpr or "reduce_window" in jaxpr) != fast

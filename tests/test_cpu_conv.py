"""The CPU convolutions (matmul weight gradients, shift-sum depthwise) compute what XLA's do."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtl.models import conv as conv_lib
from jtl.models import get_model

CASES = [  # (size, cin, cout, kernel, stride, padding)
    (8, 5, 7, 3, 1, "SAME"),
    (9, 4, 6, 3, 2, ((1, 1), (1, 1))),
    (8, 4, 6, 1, 2, "SAME"),
    (7, 3, 4, 7, 2, ((3, 3), (3, 3))),
    (8, 4, 4, 3, 2, "VALID"),
    (6, 3, 5, 1, 1, "VALID"),
    (9, 2, 3, 3, 2, ((0, 1), (1, 0))),  # TF-style asymmetric
]


def _grads(module, variables, x):
    def loss(v, x):
        return jnp.sum(jnp.sin(module.apply(v, x)))

    return jax.grad(loss, argnums=(0, 1))(variables, x)


@pytest.mark.parametrize("size, cin, cout, k, s, pad", CASES)
def test_conv_matches_xla_values_and_gradients(monkeypatch, size, cin, cout, k, s, pad):
    monkeypatch.setenv("JTL_CPU_CONV", "matmul")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, size, size, cin)), jnp.float32)
    ref = nn.Conv(cout, (k, k), (s, s), padding=pad, use_bias=False)
    ours = nn.Conv(
        cout,
        (k, k),
        (s, s),
        padding=pad,
        use_bias=False,
        conv_general_dilated=conv_lib.conv_general_dilated,
    )
    v = ref.init(jax.random.PRNGKey(0), x)
    assert "custom_vjp" in str(jax.make_jaxpr(ours.apply)(v, x))
    grad_ops = str(jax.make_jaxpr(lambda v, x: _grads(ours, v, x))(v, x))
    assert grad_ops.count("conv_general_dilated[") == 2 and "dot_general" in grad_ops
    np.testing.assert_array_equal(ref.apply(v, x), ours.apply(v, x))  # XLA's forward
    (gv_ref, gx_ref), (gv, gx) = _grads(ref, v, x), _grads(ours, v, x)
    np.testing.assert_array_equal(gx, gx_ref)  # XLA's input gradient
    w_ref, w = gv_ref["params"]["kernel"], gv["params"]["kernel"]
    np.testing.assert_allclose(w, w_ref, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(w_ref))))


DEPTHWISE_CASES = [  # (size, channels, kernel, stride, padding)
    (8, 5, 3, 1, "SAME"),
    (9, 4, 3, 2, ((0, 1), (0, 1))),  # TF "SAME" at stride 2, odd size
    (8, 6, 5, 2, ((1, 2), (1, 2))),
    (7, 3, 5, 1, "VALID"),
]


@pytest.mark.parametrize("size, c, k, s, pad", DEPTHWISE_CASES)
def test_depthwise_matches_xla_values_and_gradients(monkeypatch, size, c, k, s, pad):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, size, size, c)), jnp.float32)
    m = nn.Conv(
        c, (k, k), (s, s), padding=pad, feature_group_count=c, use_bias=False,
        conv_general_dilated=conv_lib.conv_general_dilated,
    )  # fmt: skip
    v = m.init(jax.random.PRNGKey(0), x)
    out = {}
    for mode in ("xla", "matmul"):
        monkeypatch.setenv("JTL_CPU_CONV", mode)
        jaxpr = str(jax.make_jaxpr(m.apply)(v, x))
        uses_xla = mode == "xla" or jax.default_backend() != "cpu"
        assert ("conv_general_dilated" in jaxpr) == uses_xla
        out[mode] = (m.apply(v, x), _grads(m, v, x))
    (y_ref, (gv_ref, gx_ref)), (y, (gv, gx)) = out["xla"], out["matmul"]
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-5, atol=1e-5)
    gw, gw_ref = gv["params"]["kernel"], gv_ref["params"]["kernel"]
    np.testing.assert_allclose(gw, gw_ref, rtol=1e-4, atol=1e-4)


def test_other_convolutions_are_xla_unchanged():
    x = jnp.ones((2, 8, 8, 4), jnp.float32)
    for features, kw in ((4, {"feature_group_count": 2}), (8, {"feature_group_count": 4}),
                         (4, {"kernel_dilation": (2, 2)})):  # fmt: skip
        m = nn.Conv(features, (3, 3), conv_general_dilated=conv_lib.conv_general_dilated, **kw)
        v = m.init(jax.random.PRNGKey(0), x)
        jaxpr = str(jax.make_jaxpr(m.apply)(v, x))
        assert "custom_vjp" not in jaxpr and "conv_general_dilated" in jaxpr


def test_switch_off_with_env(monkeypatch):
    monkeypatch.setenv("JTL_CPU_CONV", "xla")
    assert not conv_lib.cpu_matmul_wgrad_enabled()
    monkeypatch.setenv("JTL_CPU_CONV", "matmul")
    assert conv_lib.cpu_matmul_wgrad_enabled() == (jax.default_backend() == "cpu")
    monkeypatch.setenv("JTL_CPU_CONV", "fast")
    with pytest.raises(ValueError, match="auto, matmul, xla"):
        conv_lib.cpu_matmul_wgrad_enabled()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the probe is for XLA's CPU backend")
@pytest.mark.parametrize("measured_faster", [True, False])
def test_auto_follows_the_cached_probe(monkeypatch, tmp_path, measured_faster):
    """`auto` takes the matmul weight gradient exactly when this machine's probe said so."""
    monkeypatch.setenv("JTL_CPU_CONV", "auto")
    monkeypatch.setenv("JTL_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(conv_lib, "_probe_memo", {})
    record = {"xla_s": 1.0, "matmul_s": 0.5, "matmul_wgrad": measured_faster}
    (tmp_path / "cpu_conv_probe.json").write_text(json.dumps({conv_lib._machine_key(): record}))
    monkeypatch.setattr(conv_lib, "_time_wgrads", lambda: pytest.fail("re-measured a cached key"))
    m = nn.Conv(4, (3, 3), use_bias=False, conv_general_dilated=conv_lib.conv_general_dilated)
    x = jnp.ones((2, 6, 6, 3), jnp.float32)
    v = m.init(jax.random.PRNGKey(0), x)
    assert ("custom_vjp" in str(jax.make_jaxpr(m.apply)(v, x))) == measured_faster


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the probe is for XLA's CPU backend")
def test_probe_measures_once_and_caches(monkeypatch, tmp_path):
    monkeypatch.setattr(conv_lib, "_probe_memo", {})
    calls = []
    monkeypatch.setattr(conv_lib, "_time_wgrads", lambda: calls.append(1) or (2.0, 1.0))
    cache = tmp_path / "probe.json"
    assert conv_lib.probe_matmul_wgrad(cache) is True
    monkeypatch.setattr(conv_lib, "_probe_memo", {})  # a new process: reads the file
    assert conv_lib.probe_matmul_wgrad(cache) is True and calls == [1]
    saved = json.loads(cache.read_text())[conv_lib._machine_key()]
    assert saved == {"xla_s": 2.0, "matmul_s": 1.0, "matmul_wgrad": True}


def test_probe_timing_runs():
    t_xla, t_mm = conv_lib._time_wgrads(reps=1)
    assert t_xla > 0 and t_mm > 0


@pytest.mark.parametrize(
    "name, kwargs, dtype, size",
    [
        ("resnet18", {"stem": "cifar", "norm": "batch"}, "float32", 16),
        ("resnet18", {"stem": "cifar", "norm": "batch"}, "bfloat16", 16),
        # depthwise 3x3/5x5 at strides 1 and 2; 64 px so train-mode BatchNorm is not fed 1x1
        # maps of 4 examples (ill-conditioned: it amplifies float rounding in either path)
        ("efficientnet_lite0", {}, "float32", 64),
    ],
)
def test_training_gradients_unchanged(monkeypatch, name, kwargs, dtype, size):
    """ResNet-18 (strided + projection convs) and Lite0 (depthwise): loss and every gradient."""
    model = get_model(name, 10, dtype=dtype, **kwargs)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(8, size, size, 3)), jnp.float32)
    y = jnp.arange(8) % 10
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)  # eager init: 3x the time

    def loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        logits = logits.astype(jnp.float32)
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(8), y])

    out = {}
    for mode in ("xla", "matmul"):
        monkeypatch.setenv("JTL_CPU_CONV", mode)
        out[mode] = jax.jit(jax.value_and_grad(loss))(variables["params"])
    (loss_ref, g_ref), (loss_val, g) = out["xla"], out["matmul"]
    np.testing.assert_allclose(float(loss_val), float(loss_ref), rtol=1e-6)
    tol = 1e-4 if dtype == "float32" else 3e-2
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(g), jax.tree.leaves(g_ref), strict=True
    ):
        scale = float(jnp.max(jnp.abs(b))) or 1.0
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale, err_msg=str(path))

"""The CPU convolution (matmul weight gradients) computes what XLA's convolution computes."""

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
def test_conv_matches_xla_values_and_gradients(size, cin, cout, k, s, pad):
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


def test_other_convolutions_are_xla_unchanged():
    x = jnp.ones((2, 8, 8, 4), jnp.float32)
    for kw in ({"feature_group_count": 4}, {"kernel_dilation": (2, 2)}):
        m = nn.Conv(4, (3, 3), conv_general_dilated=conv_lib.conv_general_dilated, **kw)
        v = m.init(jax.random.PRNGKey(0), x)
        assert "custom_vjp" not in str(jax.make_jaxpr(m.apply)(v, x))


def test_switch_off_with_env(monkeypatch):
    monkeypatch.setenv("JTL_CPU_CONV", "xla")
    assert not conv_lib.cpu_matmul_wgrad_enabled()
    monkeypatch.setenv("JTL_CPU_CONV", "matmul")
    assert conv_lib.cpu_matmul_wgrad_enabled() == (jax.default_backend() == "cpu")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_resnet_training_gradients_unchanged(monkeypatch, dtype):
    """ResNet-18 (CIFAR stem, BatchNorm, strided + projection convs): loss and every gradient."""
    model = get_model("resnet18", 10, stem="cifar", norm="batch", dtype=dtype)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 16, 16, 3)), jnp.float32)
    y = jnp.arange(4) % 10
    variables = model.init(jax.random.PRNGKey(0), x)

    def loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        logits = logits.astype(jnp.float32)
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(4), y])

    out = {}
    for mode in ("xla", "matmul"):
        monkeypatch.setenv("JTL_CPU_CONV", mode)
        out[mode] = jax.jit(jax.value_and_grad(loss))(variables["params"])
    (loss_ref, g_ref), (loss_val, g) = out["xla"], out["matmul"]
    assert float(loss_val) == float(loss_ref)
    tol = 1e-4 if dtype == "float32" else 3e-2
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(g), jax.tree.leaves(g_ref), strict=True
    ):
        scale = float(jnp.max(jnp.abs(b))) or 1.0
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale, err_msg=str(path))

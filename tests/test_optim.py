"""jtl.optim: schedules, parameter rules, optimizer groups, frozen-gradient pruning."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest

from jtl.optim import (
    format_group_table,
    global_norm_trainable,
    groups_to_json,
    make_optimizer,
    make_schedule,
    match_rules,
    network_rules,
    trainable_mask,
    tree_paths,
)

BLOCKS = ["stem", "block1", "block2", "block3"]


class Backbone(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(16, (3, 3), name="stem")(x))
        for i in (1, 2, 3):
            x = nn.relu(nn.Conv(32, (3, 3), name=f"block{i}")(x))
        return x.mean(axis=(1, 2))


class Net(nn.Module):
    """Stand-in for jtl.models' Classifier: `backbone` + `head`, most compute in the backbone."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(5, name="head")(Backbone(name="backbone")(x))


MODEL = Net()
X = jax.random.normal(jax.random.PRNGKey(1), (8, 16, 16, 3))
Y = jnp.arange(8) % 5


@pytest.fixture(scope="module")
def params():
    return MODEL.init(jax.random.PRNGKey(0), X)["params"]


def cfg(**kw):
    base = dict(name="sgd", lr=0.1, weight_decay=0.0, schedule="constant")
    return {**base, **kw}


def loss_fn(p):
    logits = MODEL.apply({"params": p}, X)
    return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()


def make_step(tx, mask, norm_of_all=False):
    """Mirrors jtl.run.train's step: grads of all params, optimizer, trainable grad-norm metric."""

    def step(p, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        norm = optax.global_norm(grads) if norm_of_all else global_norm_trainable(grads, mask)
        return optax.apply_updates(p, updates), opt_state, {"loss": loss, "grad_norm": norm}

    return step


def flops(step, p, opt_state):
    cost = jax.jit(step).lower(p, opt_state).compile().cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0]
    return float(cost["flops"])


# ----------------------------------------------------------------------------- schedules


def test_schedules():
    s = make_schedule("cosine", 1.0, 100)
    assert float(s(0)) == pytest.approx(1.0) and float(s(50)) == pytest.approx(0.5)
    assert float(s(100)) == pytest.approx(0.0, abs=1e-7)
    s = make_schedule("cosine", 2.0, 100, end_factor=0.1)
    assert float(s(100)) == pytest.approx(0.2)
    s = make_schedule("linear", 1.0, 110, warmup_steps=10)
    assert [float(s(i)) for i in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert float(s(60)) == pytest.approx(0.5)
    s = make_schedule("step", 0.1, 100)  # /10 at 50% and 75%
    assert [float(s(i)) for i in (49, 50, 74, 75)] == pytest.approx([0.1, 0.01, 0.01, 0.001])
    assert float(make_schedule("constant", 0.3, 10, warmup_steps=2)(0)) == pytest.approx(0.15)
    assert float(jax.jit(make_schedule("cosine", 1.0, 10))(jnp.int32(5))) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="constant, cosine, linear, step"):
        make_schedule("cosin", 1.0, 10)
    with pytest.raises(ValueError, match="end_factor"):
        make_schedule("cosine", 1.0, 10, end_fraction=0.1)


# ----------------------------------------------------------------------------- rules


def test_match_rules_first_match_wins(params):
    paths = tree_paths(params)
    assert "backbone/block3/kernel" in paths and "head/bias" in paths
    got = match_rules(params, [("backbone/stem/.*", 1), ("backbone/.*", 2), (".*", 3)], what="x")
    assert got["backbone"]["stem"]["kernel"] == 1 and got["backbone"]["block2"]["bias"] == 2
    assert got["head"]["kernel"] == 3
    got = match_rules(params, [("head/.*", 1)], what="x", default=0)
    assert got["backbone"]["stem"]["kernel"] == 0


def test_rule_errors(params):
    with pytest.raises(ValueError, match=r"match no rule.*backbone/stem/bias"):
        match_rules(params, [("head/.*", 1)], what="lr_mults")
    with pytest.raises(ValueError, match=r"'backbone/blokc1/\.\*' matches no parameter"):
        match_rules(params, [("backbone/blokc1/.*", 1), (".*", 1)], what="lr_mults")
    with pytest.raises(ValueError, match="invalid regex"):
        match_rules(params, [("head/(", 1)], what="lr_mults")
    # The same checks through make_optimizer.
    with pytest.raises(ValueError, match="matches no parameter"):
        make_optimizer(params, cfg(frozen=("backbone/stem",)), 10)  # no /.*: matches nothing
    with pytest.raises(ValueError, match="frozen"):
        make_optimizer(params, cfg(lr_mults=(("backbone/.*", 0.0),)), 10)
    with pytest.raises(ValueError, match="frozen"):
        make_optimizer(params, cfg(lr_mults=(("backbone/.*", -1.0),)), 10)
    with pytest.raises(ValueError, match="must be >= 0|> 0"):
        make_optimizer(params, cfg(wd_mults=(("backbone/.*", -1.0),)), 10)
    with pytest.raises(TypeError, match="single string"):
        make_optimizer(params, cfg(frozen="backbone/.*"), 10)
    with pytest.raises(ValueError, match="unknown optimizer 'adamm'"):
        make_optimizer(params, cfg(name="adamm"), 10)
    with pytest.raises(ValueError, match="unknown field"):
        make_optimizer(params, cfg(weight_decy=0.1), 10)


# ----------------------------------------------------------------------------- optimizer


@pytest.mark.parametrize(
    "kw",
    [
        dict(name="momentum", weight_decay=1e-2, clip_norm=1.0),
        dict(name="adamw", lr=1e-2, weight_decay=0.1, schedule="cosine", warmup_steps=1),
    ],
)
def test_frozen_params_bit_for_bit(params, kw):
    c = mlc.ConfigDict(cfg(frozen=("backbone/(stem|block1)/.*",), **kw))
    tx, _ = make_optimizer(params, c, 10)
    mask = trainable_mask(params, c)
    assert mask["backbone"]["stem"]["kernel"] is False and mask["head"]["bias"] is True
    step = jax.jit(make_step(tx, mask))
    p, s = params, tx.init(params)
    for _ in range(3):
        p, s, _ = step(p, s)
    for name in ("stem", "block1"):
        for k in ("kernel", "bias"):
            old, new = params["backbone"][name][k], p["backbone"][name][k]
            assert np.array_equal(np.asarray(old), np.asarray(new)), (name, k)
    assert not np.array_equal(
        params["backbone"]["block3"]["kernel"], p["backbone"]["block3"]["kernel"]
    )
    assert not np.array_equal(params["head"]["kernel"], p["head"]["kernel"])


def test_lr_mult_scales_update_exactly(params):
    grads = jax.grad(loss_fn)(params)

    def updates(**kw):
        tx, _ = make_optimizer(params, cfg(lr=0.5, **kw), 10)
        return tx.update(grads, tx.init(params), params)[0]

    full = updates()
    tenth = updates(lr_mults=(("backbone/.*", 0.1),))
    for a, b in zip(
        jax.tree.leaves(full["backbone"]), jax.tree.leaves(tenth["backbone"]), strict=True
    ):
        np.testing.assert_allclose(np.asarray(b), 0.1 * np.asarray(a), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(full["head"]), jax.tree.leaves(tenth["head"]), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_weight_decay_default_skips_biases(params):
    zero = jax.tree.map(jnp.zeros_like, params)
    tx, _ = make_optimizer(params, cfg(name="adamw", weight_decay=0.1), 10)
    u = tx.update(zero, tx.init(params), params)[0]
    assert np.all(np.asarray(u["head"]["bias"]) == 0)
    k = params["backbone"]["stem"]["kernel"]
    np.testing.assert_allclose(u["backbone"]["stem"]["kernel"], -0.1 * 0.1 * k, rtol=1e-6)
    tx, _ = make_optimizer(
        params, cfg(name="adamw", weight_decay=0.1, wd_mults=((".*/kernel", 0.0), (".*", 2.0))), 10
    )
    u = tx.update(zero, tx.init(params), params)[0]
    assert np.all(np.asarray(u["backbone"]["stem"]["kernel"]) == 0)


@pytest.mark.parametrize("name", ["sgd", "nesterov", "adam", "lamb", "rmsprop"])
def test_every_optimizer_steps(params, name):
    tx, _ = make_optimizer(params, cfg(name=name, lr=1e-3, weight_decay=1e-4), 10)
    p, s = params, tx.init(params)
    for _ in range(2):
        p, s, m = jax.jit(make_step(tx, trainable_mask(params, cfg())))(p, s)
    assert np.isfinite(float(m["loss"]))


def test_step_offset_continues_schedule(params):
    grads = jax.tree.map(jnp.ones_like, params)
    c = cfg(lr=1.0, schedule="linear")
    a, _ = make_optimizer(params, c, 10, step_offset=5)
    b, _ = make_optimizer(params, c, 10)
    ua = a.update(grads, a.init(params), params)[0]
    ub = b.update(grads, b.init(params), params)[0]
    assert float(ua["head"]["bias"][0]) == pytest.approx(0.5 * float(ub["head"]["bias"][0]))


def test_group_table(params):
    c = cfg(
        weight_decay=1e-4,
        frozen=("backbone/stem/.*",),
        lr_mults=(("backbone/.*", 0.1),),
        schedules=(("head/.*", {"name": "constant", "warmup_steps": 2}),),
    )
    _, groups = make_optimizer(params, c, 10)
    by = {(g.frozen, g.lr_mult, g.wd_mult): g for g in groups}
    assert len(groups) == 5
    frozen = by[(True, 0.0, 0.0)]
    assert (frozen.label, frozen.num_tensors, frozen.num_params) == (
        "frozen",
        2,
        3 * 3 * 3 * 16 + 16,
    )
    assert frozen.rules == ("frozen: backbone/stem/.*",)
    kernels = by[(False, 0.1, 1.0)]
    assert kernels.num_tensors == 3 and kernels.num_params == 9 * 16 * 32 + 2 * 9 * 32 * 32
    assert by[(False, 0.1, 0.0)].num_params == 3 * 32  # biases: no decay by default
    head_k = by[(False, 1.0, 1.0)]
    assert head_k.paths == ("head/kernel",) and head_k.schedule == "constant+warmup2"
    assert sum(g.num_params for g in groups) == sum(x.size for x in jax.tree.leaves(params))
    table = format_group_table(groups)
    for g in groups:
        assert g.label in table
    assert "frozen: backbone/stem/.*" in table and "trainable" in table
    rows = groups_to_json(groups)
    assert rows[0]["label"] == groups[0].label and isinstance(rows[0]["rules"], list)


# ----------------------------------------------------------------------------- FLOPs


def test_frozen_backbone_prunes_backward(params):
    """Head-only steps cost about a forward pass, also with clipping and a grad-norm metric,
    because nothing reads a frozen gradient; clipping over *all* gradients undoes that."""
    head_cfg = cfg(name="momentum", clip_norm=1.0, frozen=("backbone/.*",))
    full_cfg = cfg(name="momentum", clip_norm=1.0)
    tx_full, _ = make_optimizer(params, full_cfg, 10)
    full = flops(make_step(tx_full, trainable_mask(params, full_cfg)), params, tx_full.init(params))

    tx_head, _ = make_optimizer(params, head_cfg, 10)
    mask = trainable_mask(params, head_cfg)
    s = tx_head.init(params)
    head = flops(make_step(tx_head, mask), params, s)
    assert head <= 0.45 * full, (head, full)

    # Counter-checks: reading frozen gradients (global clip / norm over all) restores the cost.
    no_clip_cfg = cfg(name="momentum", frozen=("backbone/.*",))
    tx_inner, _ = make_optimizer(params, no_clip_cfg, 10)
    tx_all = optax.chain(optax.clip_by_global_norm(1.0), tx_inner)
    clip_all = flops(make_step(tx_all, mask), params, tx_all.init(params))
    assert clip_all >= 0.8 * full, (clip_all, full)
    norm_all = flops(make_step(tx_head, mask, norm_of_all=True), params, s)
    assert norm_all >= 0.8 * full, (norm_all, full)
    print(
        f"FLOP ratios vs full: head-only {head / full:.3f}, clip-all {clip_all / full:.3f}, "
        f"norm-all {norm_all / full:.3f}"
    )


# ----------------------------------------------------------------------------- network rules


def test_layerwise_and_discriminative():
    rules = network_rules.layerwise_lr_mults(BLOCKS, 0.5)
    assert rules == [
        ("head/.*", 1.0),
        ("backbone/block3/.*", 0.5),
        ("backbone/block2/.*", 0.25),
        ("backbone/block1/.*", 0.125),
        ("backbone/stem/.*", 0.0625),
    ]
    disc = dict(network_rules.discriminative_lr_mults(BLOCKS, 2.0))
    assert disc == pytest.approx(dict(rules))
    lv = dict(network_rules.discriminative_lr_mults(BLOCKS, 2.6, levels=2))
    assert lv["backbone/block3/.*"] == lv["backbone/block2/.*"] == pytest.approx(1 / 2.6)
    assert lv["backbone/stem/.*"] == lv["backbone/block1/.*"] == pytest.approx(2.6**-2)
    with pytest.raises(ValueError, match="contiguous"):
        network_rules.discriminative_lr_mults(BLOCKS, levels=[["block1", "stem"], ["block2"]])
    with pytest.raises(ValueError, match="frozen"):
        network_rules.layerwise_lr_mults(BLOCKS, 0.0)


def test_network_rules_compose_with_optimizer(params):
    c = cfg(
        frozen=network_rules.freeze_first_k(BLOCKS, 1),
        lr_mults=network_rules.layerwise_lr_mults(BLOCKS, 0.5),
    )
    _, groups = make_optimizer(params, c, 10)
    mults = {g.paths[0].rsplit("/", 1)[0]: g.lr_mult for g in groups if not g.frozen}
    assert mults == {
        "backbone/block1": 0.125,
        "backbone/block2": 0.25,
        "backbone/block3": 0.5,
        "head": 1.0,
    }


def test_freeze_first_k():
    assert network_rules.freeze_first_k(BLOCKS, 0) == []
    assert network_rules.freeze_first_k(BLOCKS, 2) == ["backbone/stem/.*", "backbone/block1/.*"]
    with pytest.raises(ValueError, match="0..4"):
        network_rules.freeze_first_k(BLOCKS, 5)


def test_gradual_unfreeze_stages(params):
    st = network_rules.gradual_unfreeze_stages(BLOCKS, 100)
    assert len(st) == 5 and [s.start_step for s in st] == [0, 100, 200, 300, 400]
    assert [st.stage_at(i) for i in (0, 99, 100, 399, 400, 10**6)] == [0, 0, 1, 3, 4, 4]
    assert st.frozen_at(0) == [f"backbone/{b}/.*" for b in BLOCKS]  # head only
    assert st.frozen_at(150) == ["backbone/stem/.*", "backbone/block1/.*", "backbone/block2/.*"]
    assert st[1].trainable_blocks == ("block3",)
    assert st.frozen_at(400) == []
    two = network_rules.gradual_unfreeze_stages(BLOCKS, 10, blocks_per_stage=3)
    assert [len(s.frozen) for s in two] == [4, 1, 0]
    for step in (0, 150, 400):  # every stage's rules are valid optimizer rules
        mask = trainable_mask(params, cfg(frozen=tuple(st.frozen_at(step))))
        assert mask["head"]["kernel"] is True
    with pytest.raises(ValueError, match="stage_steps"):
        network_rules.gradual_unfreeze_stages(BLOCKS, 0)

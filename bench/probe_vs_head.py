"""Cached bottleneck features vs training the head through the frozen network.

    .venv/bin/python bench/probe_vs_head.py [--examples 2048] [--epochs 5,20]

Both train the same linear head with the same SGD for the same number of epochs; one pays the
frozen backbone's forward pass once (feature cache), the other every epoch (head-only step,
whose frozen backward XLA removes). The ideal speed-up is about the number of epochs.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax

from jtl.config import base_config
from jtl.models import get_model
from jtl.optim import make_optimizer, trainable_mask
from jtl.run.train import init_state, jit_train_step
from jtl.runtime import sharding
from jtl.transfer.strategies import Plan


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet20")
    p.add_argument("--examples", type=int, default=2048)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", default="5,20")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    n, b = args.examples, args.batch
    images = rng.normal(size=(n, args.size, args.size, 3)).astype(np.float32)
    labels = (np.arange(n) % 10).astype(np.int32)
    model = get_model(args.model, 10, norm="batch")
    variables = model.init(jax.random.PRNGKey(0), images[:1], train=False)
    mesh = sharding.make_mesh()
    batches = [
        sharding.shard_batch({"image": images[i : i + b], "label": labels[i : i + b]}, mesh)
        for i in range(0, n, b)
    ]

    # Through the frozen network: head-only train steps (frozen backward removed by XLA).
    optim = mlc.ConfigDict(base_config().optim.to_dict())
    optim.frozen, optim.name, optim.weight_decay = ("backbone/.*",), "sgd", 0.0
    tx, _ = make_optimizer(variables["params"], optim, 1000)
    mask = trainable_mask(variables["params"], optim)
    state = sharding.replicate(init_state(variables["params"], variables["batch_stats"], tx), mesh)
    step = jit_train_step(model, tx, mask, Plan(variables=variables, optim=optim), mesh)
    state, m = step(state, batches[0])
    jax.block_until_ready(m)
    t = time.perf_counter()
    for bt in batches:
        state, m = step(state, bt)
    jax.block_until_ready(m)
    through_epoch = time.perf_counter() - t

    # Cached: one forward pass for features, then head epochs on the feature matrix.
    feat = jax.jit(lambda v, x: model.apply(v, x, train=False, method="features"))
    jax.block_until_ready(feat(variables, batches[0]["image"]))
    t = time.perf_counter()
    feats = [feat(variables, bt["image"]) for bt in batches]
    jax.block_until_ready(feats)
    extract = time.perf_counter() - t
    head = {"kernel": jnp.zeros((feats[0].shape[1], 10)), "bias": jnp.zeros(10)}
    sgd = optax.sgd(0.1)
    feat_mat = jnp.stack([np.asarray(f) for f in feats])  # [num_batches, b, D] on one device
    label_mat = jnp.stack([np.asarray(bt["label"]) for bt in batches])

    @jax.jit
    def head_epoch(head, opt_state):
        """One epoch of the same minibatch SGD on cached features, as one compiled scan."""

        def step(carry, fy):
            h, s = carry
            f, y = fy

            def loss(h):
                logits = f @ h["kernel"] + h["bias"]
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

            u, s = sgd.update(jax.grad(loss)(h), s)
            return (optax.apply_updates(h, u), s), None

        return jax.lax.scan(step, (head, opt_state), (feat_mat, label_mat))[0]

    carry = head_epoch(head, sgd.init(head))
    jax.block_until_ready(carry)
    t = time.perf_counter()
    carry = head_epoch(*carry)
    jax.block_until_ready(carry)
    cached_epoch = time.perf_counter() - t

    print(
        f"{args.model}, {n} examples of {args.size}x{args.size}x3, batch {b}, "
        f"{jax.device_count()} device(s)"
    )
    print(f"  head-only step through frozen net: {through_epoch:.2f} s/epoch")
    print(f"  feature extraction (once):         {extract:.2f} s")
    print(f"  head epoch on cached features:     {cached_epoch * 1e3:.1f} ms/epoch")
    for e in (int(x) for x in args.epochs.split(",")):
        through, cached = e * through_epoch, extract + e * cached_epoch
        speedup = through / cached
        print(
            f"  {e:3d} epochs: through {through:7.2f} s, cached {cached:6.2f} s -> "
            f"{speedup:5.1f}x speed-up ({speedup / e:.0%} of the ideal {e}x)"
        )


if __name__ == "__main__":
    main()

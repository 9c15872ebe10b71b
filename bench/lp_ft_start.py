"""LP-FT's first step, measured: the probed model's loss in inference mode (the statistics the
probe saw) and in train mode (batch statistics, what fine-tuning uses), under the source's
BatchNorm statistics and under the target's (AdaBN, the default).

Run (an imported Lite0, e.g. a shift study's `sources/imagenet`, or `jtl import` output):
    .venv/bin/python bench/lp_ft_start.py runs/shift_near/sources/imagenet

Measured 2026-12-03 (docs/results.md, issue 20), digits 32 px, 100/class, seed 0:
source statistics: train-mode loss 46 (logits up to 854), feature cosine 0.04 between modes;
target statistics: train-mode loss 2.07 (logits up to 1.2).
"""

import sys

import jax.numpy as jnp

from jtl import config as config_lib
from jtl.data.pipeline import model_inputs
from jtl.run.train import _init_variables, build_model, cross_entropy
from jtl.transfer.strategies import plan_strategy
from jtl.weights import source_model


def main(source: str) -> None:
    args = "target=digits,size=32,strategy=lp_ft,per_class=100"
    spec = f"configs/lite0_transfer.py:{args},init={source}"
    for stats in ("source", "target"):
        overrides = ["augment=", "num_folds=3", "fold=0", "eval_test=False",
                     f"strategy_args.probe_batch_stats={stats}"]  # fmt: skip
        config = config_lib.load_config(spec, overrides)
        data = source_model.target_data(config)
        model = build_model(config, data.num_classes)
        plan = plan_strategy(config, model, _init_variables(model, config), data)
        v = {"params": plan.variables["params"], "batch_stats": plan.variables["batch_stats"]}
        batch = next(data.train_batches(config, 0))
        x, y = model_inputs(batch), batch["label"]
        inference = model.apply(v, x, train=False)
        train, _ = model.apply(v, x, train=True, mutable=["batch_stats"])
        f_inf = model.apply(v, x, train=False, method="features")
        f_tr = model.apply(v, x, train=True, method="features", mutable=["batch_stats"])[0]
        norms = jnp.linalg.norm(f_inf, axis=1) * jnp.linalg.norm(f_tr, axis=1)
        cos = jnp.mean(jnp.sum(f_inf * f_tr, 1) / norms)
        print(
            f"{stats} statistics: loss inference {float(jnp.mean(cross_entropy(inference, y))):.2f}"
            f", train mode {float(jnp.mean(cross_entropy(train, y))):.2f} (max |logit| "
            f"{float(jnp.abs(train).max()):.1f}); feature cosine between modes {float(cos):.3f}"
        )


if __name__ == "__main__":
    main(sys.argv[1])

"""ImageNet-pretrained EfficientNet-Lite0 -> small grayscale targets at 64 px, vs scratch.

Arguments (`configs/lite0_transfer.py:key=value,...`): target, strategy, per_class (0 = use
fraction), fraction, init (a `jtl import` output dir), steps, size, seed, batch, lr, model.

Run (after importing the weights, see README):
    jtl import --from "$W" --model efficientnet_lite0 --out runs/lite0_imagenet
    jtl train --workdir runs/lite0_lfw_ft \
      --config configs/lite0_transfer.py:target=lfw_subset,strategy=finetune_full,\
init=runs/lite0_imagenet
    jtl train --workdir runs/lite0_lfw_scratch \
      --config configs/lite0_transfer.py:target=lfw_subset,strategy=scratch

Expected, as measured 2026-11-23 (1 seed, 64 px, 3 channels, batch 32, 100 steps; 2-core CPU
shared with other jobs, load ~7-9, so wall times are inflated; 8.6e10 FLOPs per step):
    jtl train --workdir runs/lite0_lfw_ft10 --config.progress=False --config \
      configs/lite0_transfer.py:target=lfw_subset,strategy=finetune_full,per_class=10,\
steps=100,init=runs/lite0_imagenet
    (and strategy=scratch without init)

| target | per_class (train) | finetune_full (ImageNet Lite0) | scratch | wall ft / scratch |
|---|---|---|---|---|
| lfw_subset | 10 (20) | test 0.98 (val 0.94) | test 0.50 (val 0.50) | 718 s / 1288 s |

Not yet measured (no CPU time left in that session): per_class=50, and the digits and
fashion_mnist targets (same command with target=digits / target=fashion_mnist).
"""

import ml_collections as mlc

from jtl.config import base_config, parse_arg


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    a = parse_arg(
        arg, target="lfw_subset", strategy="scratch", per_class=0, fraction=1.0, init="",
        steps=100, size=64, seed=0, batch=32, lr=0.01, model="efficientnet_lite0",
    )  # fmt: skip
    c = base_config()
    c.dataset = a.target
    c.seed = a.seed
    c.image_size, c.channels = a.size, 3
    c.augment = "crop(4)|flip"
    c.train_per_class = a.per_class
    c.train_fraction = a.fraction
    c.model.name = a.model
    c.model.kwargs = mlc.ConfigDict({})
    c.batch_size = a.batch
    c.eval_batch_size = 128
    c.total_steps = a.steps
    c.eval_every = max(a.steps // 4, 1)
    c.checkpoint_every = a.steps
    c.keep_checkpoints = 1
    c.optim.name = "momentum"
    c.optim.lr = a.lr
    c.optim.warmup_steps = min(10, a.steps // 10)
    c.optim.schedule = "cosine"
    c.optim.weight_decay = 1e-4
    c.strategy = a.strategy
    c.init.checkpoint = a.init
    return c

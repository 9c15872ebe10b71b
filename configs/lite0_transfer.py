"""ImageNet-pretrained EfficientNet-Lite0 -> small grayscale targets at 64 px, vs scratch.

Arguments (`configs/lite0_transfer.py:key=value,...`): target, strategy, per_class (0 = use
fraction), fraction, init (a `jtl import` output dir), steps, size, seed, batch, lr, model,
bn_momentum (Lite0's BatchNorm; 0.9 here for every arm: with TF's 0.99, 100 steps leave 37% of
the initial running statistics in place, which breaks a scratch run's evaluation and keeps
ImageNet's statistics for grayscale digits).

Run (after importing the weights, see README):
    jtl import --from "$W" --model efficientnet_lite0 --out runs/lite0_imagenet
    jtl train --workdir runs/lite0_lfw_ft \
      --config configs/lite0_transfer.py:target=lfw_subset,strategy=finetune_full,\
init=runs/lite0_imagenet
    jtl train --workdir runs/lite0_lfw_scratch \
      --config configs/lite0_transfer.py:target=lfw_subset,strategy=scratch

Expected: the `imagenet_source` study runs these cells (digits and fashion_mnist at 10 and 100
per class, lfw_subset at 10 per class and full, 2 seeds); docs/results.md ("Study:
imagenet_source") has the measured table, wall time and plots on a 2-core CPU.
"""

import ml_collections as mlc

from jtl.config import base_config, parse_arg


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    a = parse_arg(
        arg, target="lfw_subset", strategy="scratch", per_class=0, fraction=1.0, init="",
        steps=100, size=64, seed=0, batch=32, lr=0.01, model="efficientnet_lite0",
        bn_momentum=0.9,
    )  # fmt: skip
    c = base_config()
    c.dataset = a.target
    c.seed = a.seed
    c.image_size, c.channels = a.size, 3
    c.augment = "crop(4)|flip"
    c.train_per_class = a.per_class
    c.train_fraction = a.fraction
    c.model.name = a.model
    kwargs = {"bn_momentum": a.bn_momentum} if a.model == "efficientnet_lite0" else {}
    c.model.kwargs = mlc.ConfigDict(kwargs)
    c.batch_size = a.batch
    c.eval_batch_size = 128
    c.total_steps = a.steps
    # Cadences as fractions of total_steps, so a study's `total_steps=N` override keeps them.
    c.eval_every, c.eval_every_fraction = 0, 0.25
    c.checkpoint_every, c.checkpoint_every_fraction = 0, 1.0
    c.keep_checkpoints = 1
    c.optim.name = "momentum"
    c.optim.lr = a.lr
    c.optim.warmup_steps, c.warmup_fraction = 10, 0.1  # 10 % of the run, at most 10
    c.optim.schedule = "cosine"
    c.optim.weight_decay = 1e-4
    c.strategy = a.strategy
    c.init.checkpoint = a.init
    return c

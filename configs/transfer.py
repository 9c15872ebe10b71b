"""Target runs: scratch vs transfer from a source checkpoint, at a chosen training-set size.

Arguments (`configs/transfer.py:key=value,...`): target (data set), strategy, per_class (0 = use
fraction), fraction, init (source checkpoint dir), steps, model, norm.

Run (after `jtl train --config configs/mnist_pretrain.py --workdir runs/mnist_pretrain`):
    jtl train --workdir runs/digits_ft10 \
      --config configs/transfer.py:target=digits,strategy=finetune_full,per_class=10,\
init=runs/mnist_pretrain
    jtl train --workdir runs/digits_scratch10 \
      --config configs/transfer.py:target=digits,strategy=scratch,per_class=10

Expected (2-core CPU, about 30 s each; docs/results.md): on digits with 10 examples per class,
fine-tuning the MNIST ResNet-20 reached test accuracy 0.947 against 0.904 from scratch, measured
with `augment=crop(2)` (the default before issue 11; pass it to reproduce those numbers).

No augmentation by default: at these short, equal-step budgets crop(2) cost cnn_small scratch
1.8 points on Fashion-MNIST 1000/class and 0.7 on digits 100/class (docs/results.md "Why jtl's
SGD arms trailed PyTorch"); long (converged) runs may want it back via `augment=crop(2)`.
"""

import ml_collections as mlc

from jtl.config import base_config, parse_arg
from jtl.models import default_width


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    a = parse_arg(
        arg,
        target="digits",
        strategy="scratch",
        per_class=0,
        fraction=1.0,
        init="",
        steps=200,
        batch=64,
        lr=0.05,
        model="resnet20",
        norm="batch",
        width=0.0,  # 0: the model's default (default_width: resnet20 0.5, cnn_small 1.0)
        augment="",  # e.g. crop(2): measured to cost short budgets accuracy (docs/results.md)
        seed=0,
    )
    c = base_config()
    c.dataset = a.target
    c.seed = a.seed
    c.image_size, c.channels = 28, 1
    c.augment = a.augment
    c.train_per_class = a.per_class
    c.train_fraction = a.fraction
    c.model.name = a.model
    c.model.kwargs = mlc.ConfigDict({"norm": a.norm, "width": a.width or default_width(a.model)})
    c.batch_size = a.batch
    c.total_steps = a.steps
    # Cadences as fractions of total_steps, so a study's `total_steps=N` override keeps them.
    c.eval_every, c.eval_every_fraction = 0, 0.25
    c.checkpoint_every, c.checkpoint_every_fraction = 0, 1.0
    c.keep_checkpoints = 1
    c.optim.name = "momentum"
    c.optim.lr = a.lr
    c.optim.warmup_steps, c.warmup_fraction = 20, 0.1  # 10 % of the run, at most 20
    c.optim.schedule = "cosine"
    c.optim.weight_decay = 5e-4
    c.strategy = a.strategy
    c.init.checkpoint = a.init
    return c

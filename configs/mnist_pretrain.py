"""Source model: a CIFAR-style ResNet-20 (width 0.5) pretrained on MNIST (28x28x1).

Run:
    jtl train --config configs/mnist_pretrain.py --workdir runs/mnist_pretrain
    jtl train --config configs/mnist_pretrain.py:steps=2000 --workdir runs/mnist_pretrain_long

Expected (measured on a 2-core CPU, see docs/results.md): test accuracy 0.982 after the
default 400 steps of batch 128 (about 2 minutes), measured with `augment=crop(2)`, the default
before issue 11 (now no augmentation by default, as in configs/transfer.py).
"""

import ml_collections as mlc

from jtl.config import base_config, parse_arg
from jtl.models import default_width


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    a = parse_arg(
        arg, steps=400, model="resnet20", norm="batch", width=0.0, batch=128, lr=0.1, augment="",
        dataset="mnist",  # any image data set, e.g. mnist|classes(0-4) (jtl data list)
    )  # fmt: skip
    c = base_config()
    c.dataset = a.dataset
    c.image_size, c.channels = 28, 1
    c.augment = a.augment
    c.model.name = a.model
    c.model.kwargs = mlc.ConfigDict({"norm": a.norm, "width": a.width or default_width(a.model)})
    c.batch_size = a.batch
    c.total_steps = a.steps
    c.eval_every = max(a.steps // 4, 1)
    c.checkpoint_every = max(a.steps // 2, 1)
    c.optim.name = "momentum"
    c.optim.lr = a.lr
    c.optim.warmup_steps = min(50, a.steps // 10)
    c.optim.schedule = "cosine"
    c.optim.weight_decay = 5e-4
    return c

"""A seconds-long run for tests and smoke checks: cnn_small on sklearn digits (no fetch needed).

Run:
    jtl train --config configs/tiny.py --workdir /tmp/jtl_tiny

Expected: a smoke run, not a result: test accuracy 0.940 after the default 60 steps on 2 CPU
devices (measured 2026-11-30 after issue 11: new cnn_small and uniform scratch head; 0.36 before).
"""

import ml_collections as mlc

from jtl.config import base_config, parse_arg


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    a = parse_arg(arg, steps=60, model="cnn_small", norm="batch", dataset="digits", batch=32)
    c = base_config()
    c.dataset = a.dataset
    c.image_size, c.channels = 16, 1
    c.model.name = a.model
    c.model.kwargs = mlc.ConfigDict({"norm": a.norm})
    c.batch_size = a.batch
    c.eval_batch_size = 128
    c.total_steps = a.steps
    c.eval_every = max(a.steps // 2, 1)
    c.log_every = 10
    c.checkpoint_every = max(a.steps // 2, 1)
    c.optim.name = "adam"
    c.optim.lr = 3e-3
    c.optim.weight_decay = 0.0
    c.optim.schedule = "constant"
    c.progress = False
    return c

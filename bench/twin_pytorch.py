"""The same SGD recipe trained by jtl's own trainer and by an independent PyTorch script.

    .venv/bin/python bench/twin_pytorch.py [--seeds 3] [--arms scratch,finetune]
        [--cells digits:100,digits:full,fashion_mnist:1000] [--jtl KEY=VALUE ...] [--torch-...]

Why: issue 11 measured jtl's SGD arms 2-8 points behind a PyTorch script on the "same" recipe
while linear probes agreed. This bench makes "the same" literal: both sides train the same
network (`TwinNet` below = jtl's `cnn_small` with the widths/pools given by `--widths/--pools`;
tests/test_twin_pytorch.py copies weights across and checks logits and one SGD step agree) on the
same training indices (jtl's own nested subset and validation split) for the same number of
steps, and the table prints both sides' test accuracy (mean ± std over seeds) and the gap.

The PyTorch side is the issue's recipe by default: PyTorch default init, inputs / 255, no
augmentation, minibatches drawn uniformly with replacement, SGD(momentum, weight_decay) with
coupled weight decay on every parameter, cosine decay with no warmup, head init default.
Each `--torch-*` flag moves one of these to what jtl does, so a factor can be measured on its
own (one factor at a time); `--jtl KEY=VALUE` overrides jtl's config the same way
(`--config.KEY=VALUE` of `jtl train`). The jtl side is `jtl.run.train.train` on
`configs/transfer.py` (the reference recipe), with `model=cnn_small` and the architecture above.

Fine-tune arm: both sides pretrain the same architecture on MNIST (`--source-steps` steps, same
recipe), then fine-tune everything with a new head; jtl runs `strategy=finetune_full` (backbone
LR x `strategy_args.backbone_lr_mult`), PyTorch does the same (`--torch-backbone-lr-mult`).

PyTorch (2.13 CPU) is a bench/test-only dependency; jtl never imports it.
Threads: PyTorch gets `torch.set_num_threads(--torch-threads)` (default 2 = this machine's
cores, the same as jtl's one XLA device per core); accuracy does not depend on it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from jtl.runtime.cpu import configure_cpu_devices

configure_cpu_devices([64])  # jtl's default CPU path (one XLA device per core); before jax

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- PyTorch twin


def torch_net(
    widths: tuple[int, ...], pools: tuple[bool, ...], num_classes: int, in_ch: int = 1
) -> Any:
    """conv3x3(+bias) + BN + ReLU (+2x2 max-pool) per width, global average pool, linear head.

    The conv bias is kept as in the issue's script; under BatchNorm it is a no-op (the batch mean
    removes it in training, the running mean absorbs it at test time).
    """
    import torch
    from torch import nn

    class TwinNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            c = in_ch
            for w, p in zip(widths, pools, strict=True):
                layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
                if p:
                    layers.append(nn.MaxPool2d(2))
                c = w
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(c, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x).mean(dim=(2, 3)))

    return TwinNet()


def torch_reinit(net: Any, scheme: str) -> None:
    """`scheme`: "torch" keeps PyTorch's defaults; "he" = jtl's He fan_out normal for convs."""
    from torch import nn

    if scheme == "torch":
        return
    if scheme != "he":
        raise ValueError(f"unknown init {scheme!r}")
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)


def load_uint8(config: Any) -> dict[str, np.ndarray]:
    """jtl's own train / test indices of `config` as uint8 images resized like jtl does."""
    from jtl.data import augment as aug
    from jtl.data.pipeline import read_records
    from jtl.data.target import TargetData

    data = TargetData(config)
    out = {}
    for split, source, idx in (
        ("train", data.dataset.splits["train"], data.train_idx),
        ("test", data.dataset.splits["test"], data.test_idx),
    ):
        x, y = read_records(source, np.asarray(idx, np.int64))
        out[f"x_{split}"] = aug.fit_images(x, config.image_size, config.channels)
        out[f"y_{split}"] = np.asarray(y, np.int64)
    return out


def to_tensor(x: np.ndarray, scale: str) -> Any:
    import torch

    xf = x.astype(np.float32)
    xf = xf / 255.0 if scale == "255" else (xf - 127.5) / 127.5
    return torch.from_numpy(np.ascontiguousarray(xf.transpose(0, 3, 1, 2)))


def torch_train(
    net: Any,
    arrays: dict[str, np.ndarray],
    args: argparse.Namespace,
    seed: int,
    steps: int,
    lr: float,
    backbone_lr_mult: float = 1.0,
) -> float:
    """The issue's PyTorch recipe (factors switchable by `--torch-*`); returns test accuracy."""
    import torch
    import torch.nn.functional as F

    g = np.random.default_rng(seed)
    x_train = to_tensor(arrays["x_train"], args.torch_scale)
    y_train = torch.from_numpy(arrays["y_train"])
    n = len(y_train)
    if args.torch_order == "replace":
        order = g.integers(0, n, size=(steps, args.batch))
    else:  # epoch shuffles, as jtl's pipeline
        epochs = math.ceil(steps * args.batch / n) + 1
        order = np.concatenate([g.permutation(n) for _ in range(epochs)])
        order = order[: steps * args.batch].reshape(steps, args.batch)
    head = [p for name, p in net.named_parameters() if name.startswith("head.")]
    body = [p for name, p in net.named_parameters() if not name.startswith("head.")]
    groups = [{"params": body, "lr": lr * backbone_lr_mult}, {"params": head, "lr": lr}]
    if args.torch_wd == "coupled":
        opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=args.wd)
    else:
        opt = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    decayed = [p for p in net.parameters() if p.ndim > 1]
    base = [pg["lr"] for pg in opt.param_groups]
    warm = args.torch_warmup

    def factor(t: int) -> float:
        if t < warm:
            return (t + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (t - warm) / max(steps - warm, 1)))

    net.train()
    for t in range(steps):
        f = factor(t)
        for pg, b in zip(opt.param_groups, base, strict=True):
            pg["lr"] = b * f
        idx = torch.from_numpy(order[t])
        loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.torch_wd == "decoupled":  # jtl's SGDW: decay outside momentum, kernels only
            with torch.no_grad():
                lrs = {id(p): pg["lr"] for pg in opt.param_groups for p in pg["params"]}
                for p in decayed:
                    p.mul_(1 - lrs[id(p)] * args.wd)
        opt.step()
    net.eval()
    x_test, y_test = to_tensor(arrays["x_test"], args.torch_scale), arrays["y_test"]
    correct = 0
    with torch.no_grad():
        for s in range(0, len(y_test), 1000):
            pred = net(x_test[s : s + 1000]).argmax(1).numpy()
            correct += int((pred == y_test[s : s + 1000]).sum())
    return correct / len(y_test)


# ----------------------------------------------------------------------------- jtl side


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """`--jtl-model KEY=VALUE` -> extra `cnn_small` kwargs (e.g. init=torch)."""
    from jtl.config import _parse_value

    return {k: _parse_value(v) for k, _, v in (item.partition("=") for item in args.jtl_model)}


def jtl_config(
    target: str,
    size: str,
    seed: int,
    args: argparse.Namespace,
    strategy: str = "scratch",
    init: str = "",
) -> Any:
    """`configs/transfer.py` (the reference target recipe) with the twin's model and overrides."""
    from jtl.config import apply_overrides, load_config

    per_class = 0 if size == "full" else int(size)
    spec = (
        f"{ROOT}/configs/transfer.py:target={target},strategy={strategy},per_class={per_class},"
        f"steps={args.steps},batch={args.batch},lr={args.lr},model=cnn_small,width=1.0,"
        f"seed={seed}"
    )
    if init:
        spec += f",init={init}"
    config = load_config(spec)
    return apply_overrides(_as_twin(config, args), args.jtl)


def _as_twin(config: Any, args: argparse.Namespace) -> Any:
    """`config` (unlocked) with the twin's net, weight decay and no progress bar; locked."""
    import ml_collections as mlc

    config.unlock()
    kw = dict(config.model.kwargs)
    kw.update(widths=list(args.widths), pools=list(args.pools), **model_kwargs(args))
    config.model.kwargs = mlc.ConfigDict(kw)
    config.optim.weight_decay = args.wd
    config.progress = False
    config.lock()
    return config


def jtl_source(args: argparse.Namespace, seed: int, workdir: Path) -> str:

    from jtl.config import apply_overrides, load_config
    from jtl.run.train import train

    config = load_config(
        f"{ROOT}/configs/mnist_pretrain.py:model=cnn_small,width=1.0,steps={args.source_steps},"
        f"lr={args.lr},batch={args.batch}"
    )
    config.unlock()
    config.seed = seed
    config = apply_overrides(_as_twin(config, args), args.jtl_source)
    summary = train(config, workdir)
    print(f"  jtl source seed {seed}: MNIST test {100 * summary['test_accuracy']:.2f}", flush=True)
    return str(workdir)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--cells",
        default="digits:10,digits:100,digits:full,fashion_mnist:10,"
        "fashion_mnist:100,fashion_mnist:1000",
        help="target:size (examples per class or 'full'), comma-separated",
    )
    p.add_argument("--arms", default="scratch", help="scratch,finetune")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--source-steps", type=int, default=900)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--widths", type=lambda s: tuple(map(int, s.split(","))), default=(32, 64, 128))
    p.add_argument(
        "--pools",
        type=lambda s: tuple(x == "1" for x in s.split(",")),
        default=(True, True, False),
        help="e.g. 1,1,0",
    )
    p.add_argument("--sides", default="jtl,torch")
    p.add_argument("--jtl", nargs="*", default=[], help="jtl config overrides KEY=VALUE")
    p.add_argument("--jtl-model", nargs="*", default=[], help="cnn_small kwargs KEY=VALUE")
    p.add_argument("--jtl-source", nargs="*", default=[], help="overrides of the jtl source run")
    p.add_argument("--torch-init", default="torch", choices=("torch", "he"))
    p.add_argument("--torch-scale", default="255", choices=("255", "pm1"))
    p.add_argument("--torch-order", default="replace", choices=("replace", "epoch"))
    p.add_argument("--torch-wd", default="coupled", choices=("coupled", "decoupled"))
    p.add_argument("--torch-warmup", type=int, default=0)
    p.add_argument("--torch-zero-head", action="store_true")
    p.add_argument("--torch-backbone-lr-mult", type=float, default=0.1)
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--json", default="", help="also write all per-seed results here")
    args = p.parse_args(argv)
    if len(args.widths) != len(args.pools):
        p.error("--widths and --pools differ in length")
    return args


def _fmt(xs: list[float]) -> str:
    if not xs:
        return "-"
    m = 100 * statistics.fmean(xs)
    s = 100 * statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from jtl.run.train import train

    torch.set_num_threads(args.torch_threads)
    sides = args.sides.split(",")
    cells = [tuple(c.split(":")) for c in args.cells.split(",")]
    arms = args.arms.split(",")
    results: dict[tuple[str, str, str, str], list[float]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="jtl_twin_"))
    t0 = time.time()
    for seed in range(args.seeds):
        jtl_src = torch_src = None
        if "finetune" in arms:
            if "jtl" in sides:
                jtl_src = jtl_source(args, seed, tmp / f"src_jtl_{seed}")
            if "torch" in sides:
                cfg = jtl_config("mnist", "full", seed, args)
                torch.manual_seed(seed)
                torch_src = torch_net(args.widths, args.pools, 10)
                torch_reinit(torch_src, args.torch_init)
                acc = torch_train(
                    torch_src, load_uint8(cfg), args, seed, args.source_steps, args.lr
                )
                print(f"  torch source seed {seed}: MNIST test {100 * acc:.2f}", flush=True)
        for target, size in cells:
            arrays = None
            for arm in arms:
                if "jtl" in sides:
                    strategy = "finetune_full" if arm == "finetune" else "scratch"
                    init = (jtl_src or "") if arm == "finetune" else ""
                    cfg = jtl_config(target, size, seed, args, strategy, init)
                    wd = tmp / f"{target}_{size}_{arm}_{seed}"
                    acc = train(cfg, wd)["test_accuracy"]
                    results.setdefault((target, size, arm, "jtl"), []).append(acc)
                    print(
                        f"  jtl   {target}:{size} {arm} seed {seed}: {100 * acc:.2f} "
                        f"({time.time() - t0:.0f} s)",
                        flush=True,
                    )
                if "torch" in sides:
                    cfg = jtl_config(target, size, seed, args)
                    arrays = arrays or load_uint8(cfg)
                    num_classes = int(arrays["y_test"].max()) + 1
                    torch.manual_seed(seed)
                    net = torch_net(args.widths, args.pools, num_classes)
                    torch_reinit(net, args.torch_init)
                    mult = 1.0
                    if arm == "finetune":
                        state = {
                            k: v
                            for k, v in torch_src.state_dict().items()
                            if not k.startswith("head.")
                        }
                        net.load_state_dict(state, strict=False)
                        mult = args.torch_backbone_lr_mult
                    if args.torch_zero_head or arm == "finetune":
                        torch.nn.init.zeros_(net.head.weight)
                        torch.nn.init.zeros_(net.head.bias)
                    acc = torch_train(net, arrays, args, seed, args.steps, args.lr, mult)
                    results.setdefault((target, size, arm, "torch"), []).append(acc)
                    print(
                        f"  torch {target}:{size} {arm} seed {seed}: {100 * acc:.2f} "
                        f"({time.time() - t0:.0f} s)",
                        flush=True,
                    )
    print(
        f"\ntest accuracy %, mean ± std over {args.seeds} seed(s), {args.steps} steps of "
        f"batch {args.batch}, lr {args.lr}, widths {args.widths}, pools {args.pools}; "
        f"jtl overrides {args.jtl}; wall {time.time() - t0:.0f} s"
    )
    print("| target | size | arm | jtl | PyTorch | jtl - PyTorch |\n|---|---|---|---|---|---|")
    for target, size in cells:
        for arm in arms:
            a = results.get((target, size, arm, "jtl"), [])
            b = results.get((target, size, arm, "torch"), [])
            diff = f"{100 * (statistics.fmean(a) - statistics.fmean(b)):+.1f}" if a and b else "-"
            print(f"| {target} | {size} | {arm} | {_fmt(a)} | {_fmt(b)} | {diff} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"|".join(k): v for k, v in results.items()}))


if __name__ == "__main__":
    main()

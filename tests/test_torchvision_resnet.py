"""torchvision-layout ResNets import into jtl with the same logits (random weights, eval mode).

torchvision itself does not import beside the CPU torch here, so the test builds the exact
torchvision module tree (same parameter names and shapes: conv1, bn1, layerL.I.{conv,bn}K,
downsample.0/1, fc) in plain torch and saves its state dict the way a user's file would be.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="pip install torch==2.13.0 (parity tests only)")
nn = torch.nn


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (self.downsample(x) if self.downsample is not None else x))


class TorchvisionResNet(nn.Module):
    def __init__(self, block, layers, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if (j == 0 and i > 1) else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _randomize_bn(net, seed):
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize(
    "name,block,layers,classes",
    [("resnet18", Basic, (2, 2, 2, 2), 1000), ("resnet50", Bottleneck, (3, 4, 6, 3), 7)],
)
def test_torchvision_resnet_parity(tmp_path, name, block, layers, classes):
    import jax

    from jtl.interop.importer import convert_file
    from jtl.models import get_model

    torch.manual_seed(0)
    net = TorchvisionResNet(block, layers, classes).eval()
    _randomize_bn(net, 1)
    path = tmp_path / f"{name}.pth"
    torch.save(net.state_dict(), path)
    variables, meta = convert_file(path, name)
    assert meta["model_kwargs"]["num_classes"] == classes
    x = np.random.default_rng(0).normal(size=(2, 96, 80, 3)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    model = get_model(name, classes)
    ours = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
    err = float(np.max(np.abs(ours - ref)))
    print(f"{name}: max |logit diff| = {err:.2e}")
    assert err < 1e-4 * max(1.0, float(np.max(np.abs(ref))))


def test_wrong_architecture_file_lists_keys(tmp_path):
    from jtl.interop.convert import ConversionError
    from jtl.interop.importer import convert_file

    net = TorchvisionResNet(Basic, (2, 2, 2, 2), 10)
    path = tmp_path / "r18.pth"
    torch.save(net.state_dict(), path)
    with pytest.raises(ConversionError, match="layer3"):
        convert_file(path, "resnet50")


def test_transfer_from_an_imported_torchvision_resnet_feeds_its_normalisation(tmp_path):
    """The README's old known gap: fine-tuning an imported torchvision ResNet fed it jtl's
    [-1, 1] inputs. Now the transfer run reads `preprocess` from the import and feeds ImageNet
    mean/std: jtl's logits on the run's own batches equal the PyTorch network's on the same
    images normalized the torchvision way; the run's model.json and summary say so."""
    import json
    from pathlib import Path

    import jax

    from jtl import config as config_lib
    from jtl.data import augment
    from jtl.interop.importer import import_checkpoint
    from jtl.models import get_model
    from jtl.run.train import train
    from jtl.weights import source_model

    torch.manual_seed(0)
    net = TorchvisionResNet(Basic, (2, 2, 2, 2), 10).eval()
    _randomize_bn(net, 1)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    imported = tmp_path / "imported"
    import_checkpoint(tmp_path / "r18.pth", "resnet18", imported)
    assert source_model.source_input_scale(imported) == "torchvision"

    tiny = str(Path(__file__).parent.parent / "configs" / "tiny.py")
    overrides = [
        "model.name=resnet18",
        "model.kwargs={}",
        "image_size=32",
        "channels=3",
        "strategy=finetune_full",
        f"init.checkpoint={imported}",
        "batch_size=8",
        "eval_batch_size=8",
        "train_per_class=2",
    ]
    config = config_lib.load_config(f"{tiny}:steps=2", overrides)
    data = source_model.target_data(config)
    assert data.input_scale == "torchvision"
    batch = next(data.eval_batches("test", 8))
    raw = data.dataset.splits["test"]
    images = augment.fit_images(np.stack([raw[i]["image"] for i in range(8)]), 32, 3)
    expected = (images / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(batch["image"], expected, atol=1e-5)

    info, _, variables = source_model.load(imported, batch["image"][:1])
    model = get_model("resnet18", 10)
    ours = np.asarray(
        jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, batch["image"])
    )
    with torch.no_grad():
        ref = net(torch.from_numpy(expected.astype(np.float32).transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())))

    summary = train(config, tmp_path / "run")
    assert summary["input_scale"] == "torchvision"
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["input_scale"] == "torchvision" and meta["preprocess"] == "fit"
    run = source_model.describe(tmp_path / "run")
    assert (run.model, run.num_classes, run.input_scale) == ("resnet18", 10, "torchvision")
    # A run whose model.json says torchvision predicts with the same normalisation.
    x = source_model.prepare_image(run, np.asarray(raw[0]["image"]))
    np.testing.assert_allclose(x, expected[0], atol=1e-5)


def test_a_run_from_before_input_scales_is_not_resumed_with_another_scale(tmp_path):
    """An old config.json (no input_scale field) fed [-1, 1]: it still matches a config whose
    "auto" resolves to [-1, 1], but not one whose source is an imported torchvision ResNet."""
    from pathlib import Path

    from jtl import config as config_lib
    from jtl.interop.importer import import_checkpoint
    from jtl.weights import source_model

    torch.manual_seed(0)
    torch.save(TorchvisionResNet(Basic, (2, 2, 2, 2), 10).state_dict(), tmp_path / "r18.pth")
    imported = tmp_path / "imported"
    import_checkpoint(tmp_path / "r18.pth", "resnet18", imported)
    tiny = str(Path(__file__).parent.parent / "configs" / "tiny.py")
    for init, expected in (("", []), (str(imported / "checkpoints"), ["input_scale"])):
        config = config_lib.load_config(tiny, [f"init.checkpoint={init}"])
        old = config_lib.to_dict(config)
        del old["input_scale"]
        scale = source_model.resolve_input_scale(config)
        assert config_lib.config_diff(old, config, input_scale=scale) == expected

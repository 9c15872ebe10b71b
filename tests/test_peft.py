"""Parameter-efficient strategies (lora, bitfit, adapter, norm_only): exactness of the
transforms, what trains and what stays frozen, optimizer-state cost, resume and the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
from flax import traverse_util

from jtl import config as config_lib
from jtl.evaluation import costs
from jtl.models import get_model, peft
from jtl.optim import make_optimizer, trainable_mask
from jtl.transfer import strategies
from jtl.weights import checkpoint as ckpt
from jtl.weights.slim_checkpoint import SlimCheckpoint
from tests.helpers import (
    assert_same_saved_weights,
    fake_summary,
    interrupted_then_resumed,
    saved_weights,
    tiny_study_cells,
)

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.py")
BERT_KW = {
    "vocab_size": 50,
    "hidden_size": 16,
    "num_layers": 2,
    "num_heads": 2,
    "intermediate_size": 32,
    "max_positions": 16,
}


class _Data:
    """What the PEFT plans read from the target data: one example input."""

    def __init__(self, x):
        self.x = x

    def example_inputs(self):
        return self.x


def _setup(name: str, **kw):
    """(model, variables with a random head, example input, config) for a small model."""
    if name == "bert":
        model = get_model("bert", 3, **BERT_KW)
        ids = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 0, 50)
        x = {"input_ids": ids, "attention_mask": jnp.ones((2, 8), jnp.int32)}
    else:
        model = get_model(name, 3, **kw)
        size = 32 if name == "efficientnet_lite0" else 16
        x = jax.random.normal(jax.random.PRNGKey(1), (2, size, size, 3 if size == 32 else 1))
    v = jax.jit(lambda: model.init(jax.random.PRNGKey(0), x, train=False))()
    v = {"params": dict(v["params"]), "batch_stats": v.get("batch_stats", {})}
    # A zero-init head would make every logit 0 whatever the backbone does: randomize it.
    head = v["params"]["head"]
    v["params"]["head"] = {
        "kernel": jax.random.normal(jax.random.PRNGKey(2), head["kernel"].shape),
        "bias": head["bias"],
    }
    config = config_lib.base_config()
    config.model.name = name
    return model, v, x, config


def _plan(strategy: str, model, v, x, config):
    optim = mlc.ConfigDict(config.optim.to_dict())
    setup = strategies.Setup(config, model, v, _Data(x), optim, {})
    return strategies.REGISTRY[strategy].plan(setup)


def _logits(model, v, x):
    if not v["batch_stats"]:
        v = {"params": v["params"]}
    return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x))


@pytest.mark.parametrize("name", ["cnn_small", "resnet20", "efficientnet_lite0", "bert"])
def test_lora_with_zero_b_is_bit_identical_to_the_base(name):
    model, v, x, config = _setup(name)
    plan = _plan("lora", model, v, x, config)
    factors = traverse_util.flatten_dict(plan.variables["params"][peft.LORA])
    assert factors and all(not np.any(f) for k, f in factors.items() if k[-1] == "b")
    np.testing.assert_array_equal(
        _logits(plan.model, plan.variables, x), _logits(model, v, x), err_msg=name
    )


def test_lora_default_targets_bert_query_value_and_every_conv_kernel():
    model, v, x, config = _setup("bert")
    lora = traverse_util.flatten_dict(_plan("lora", model, v, x, config).variables["params"])
    kernels = sorted({"/".join(k[1:-1]) for k in lora if k[0] == peft.LORA})
    assert kernels == [f"backbone/block{i}/{n}/kernel" for i in (1, 2) for n in ("query", "value")]
    model, v, x, config = _setup("resnet20")
    lora = _plan("lora", model, v, x, config).variables["params"][peft.LORA]
    convs = [k for k in traverse_util.flatten_dict(v["params"]["backbone"]) if k[-1] == "kernel"]
    assert len(traverse_util.flatten_dict(lora)) == 2 * len(convs) > 0
    config.strategy_args.lora_targets = ("backbone/no_such_layer/kernel",)
    with pytest.raises(ValueError, match="matches no 2-D or 4-D kernel"):
        _plan("lora", model, v, x, config)


def _random_b(params: dict, seed: int = 3) -> dict:
    flat = traverse_util.flatten_dict(params[peft.LORA])
    for i, k in enumerate(sorted(flat)):
        if k[-1] == "b":
            flat[k] = 0.1 * jax.random.normal(jax.random.PRNGKey(seed + i), flat[k].shape)
    return {**params, peft.LORA: traverse_util.unflatten_dict(flat)}


def _unmerged(model, v, x, scale: float):
    """Reference: base layer output + scale * low-rank path, computed next to the layer.

    Conv: a (kh, kw, Cin -> r) conv with the layer's strides and padding, then a 1x1 (r -> Cout)
    conv; Dense: (x @ a) @ b. Independent of `peft.merge_lora`.
    """
    factors = v["params"][peft.LORA]

    def lowrank(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        m = context.module
        if context.method_name != "__call__" or not isinstance(m, nn.Dense | nn.Conv):
            return out
        node = factors
        for part in (*m.path, "kernel"):
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                return out
        a, b, h = node["a"], node["b"], args[0]
        if isinstance(m, nn.Conv):
            kh, kw = m.kernel_size
            ka = a.reshape(kh, kw, h.shape[-1], a.shape[-1])
            strides = m.strides or 1
            strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
            pad = m.padding if not isinstance(m.padding, int) else ((m.padding, m.padding),) * 2
            y = jax.lax.conv_general_dilated(
                h, ka, strides, pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        else:
            y = h @ a
        return out + scale * (y @ b)

    base = {"params": {k: p for k, p in v["params"].items() if k != peft.LORA}}
    if v["batch_stats"]:
        base["batch_stats"] = v["batch_stats"]
    with nn.intercept_methods(lowrank):
        return np.asarray(model.apply(base, x, train=False))


@pytest.mark.parametrize("name", ["cnn_small", "bert"])
def test_lora_merged_and_unmerged_outputs_agree(name):
    model, v, x, config = _setup(name)
    plan = _plan("lora", model, v, x, config)
    trained = {**plan.variables, "params": _random_b(plan.variables["params"])}
    merged = _logits(plan.model, trained, x)
    unmerged = _unmerged(model, trained, x, plan.model.lora_scale)
    assert np.max(np.abs(merged - _logits(model, v, x))) > 1e-3  # the update does something
    np.testing.assert_allclose(merged, unmerged, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["cnn_small", "bert"])
def test_adapters_start_as_identity_and_then_act_after_each_block(name):
    model, v, x, config = _setup(name)
    plan = _plan("adapter", model, v, x, config)
    adapters = plan.variables["params"][peft.ADAPTER]
    assert sorted(adapters) == sorted(model.block_names()[1:])
    np.testing.assert_array_equal(_logits(plan.model, plan.variables, x), _logits(model, v, x))
    for block in adapters:  # a non-zero `up` in any single block changes the logits
        p = jax.tree.map(lambda a: a, plan.variables["params"])
        up = p[peft.ADAPTER][block]["up"]
        up["kernel"] = jnp.ones_like(up["kernel"])
        out = _logits(plan.model, {**plan.variables, "params": p}, x)
        assert np.max(np.abs(out - _logits(model, v, x))) > 1e-4, block


def _trainable_paths(plan) -> set[str]:
    mask = trainable_mask(plan.variables["params"], plan.optim)
    flat = traverse_util.flatten_dict(mask)
    return {"/".join(k) for k, m in flat.items() if m}


def test_bitfit_trains_biases_and_norm_scales_only():
    model, v, x, config = _setup("bert")
    paths = _trainable_paths(_plan("bitfit", model, v, x, config))
    assert {"head/kernel", "head/bias", "backbone/block1/query/bias"} <= paths
    assert "backbone/block1/attn_norm/scale" in paths and "backbone/stem/norm/bias" in paths
    backbone = {p for p in paths if p.startswith("backbone/")}
    assert all(p.rsplit("/", 1)[1] in ("bias", "scale") for p in backbone)
    assert "backbone/block1/query/kernel" not in paths


@pytest.mark.parametrize("name", ["resnet20", "bert"])
def test_norm_only_trains_normalisation_layers_only(name):
    model, v, x, config = _setup(name)
    paths = _trainable_paths(_plan("norm_only", model, v, x, config))
    backbone = {p for p in paths if p.startswith("backbone/")}
    flat = traverse_util.flatten_dict(v["params"]["backbone"])
    norms = {
        "backbone/" + "/".join(k)
        for k in flat
        if "norm" in k[-2] or k[-2].endswith("_bn") or k[-2] == "bn"
    }
    assert backbone == norms and norms
    assert {"head/kernel", "head/bias"} <= paths
    if name == "bert":  # Dense biases are not normalisation parameters
        assert "backbone/block1/query/bias" not in paths


def test_lora_r4_optimizer_state_is_under_5_percent_of_full_finetuning_on_resnet18():
    model = get_model("resnet18", 10)
    x = jnp.zeros((1, 32, 32, 3))
    v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    v = {"params": dict(v["params"]), "batch_stats": v["batch_stats"]}
    config = config_lib.base_config()
    config.model.name, config.optim.name = "resnet18", "adam"
    config.strategy_args.lora_rank = 4
    holder = {}

    def lora_params(variables):
        holder["plan"] = _plan("lora", model, variables, x, config)
        return holder["plan"].variables["params"]

    lora = jax.eval_shape(lora_params, v)
    tx_lora, _ = make_optimizer(lora, holder["plan"].optim, 100)
    tx_full, _ = make_optimizer(v["params"], config.optim, 100)
    lora_bytes = costs.tree_bytes(jax.eval_shape(tx_lora.init, lora))
    full_bytes = costs.tree_bytes(jax.eval_shape(tx_full.init, v["params"]))
    assert full_bytes > 2 * 4 * 11e6  # adam: two float32 moments of ResNet-18's 11M params
    assert lora_bytes <= 0.05 * full_bytes, (lora_bytes, full_bytes, lora_bytes / full_bytes)


# ----------------------------------------------------------------------------- trainer


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from jtl.run.train import train

    wd = tmp_path_factory.mktemp("source")
    train(config_lib.load_config(f"{TINY}:steps=40"), wd)
    return wd


def _target(source, strategy, *overrides, steps=20):
    return config_lib.load_config(
        f"{TINY}:steps={steps}",
        [f"strategy={strategy}", f"init.checkpoint={source}", "checkpoint_every=10", *overrides],
    )


@pytest.mark.parametrize("strategy", ["lora", "adapter"])
def test_frozen_base_weights_are_bit_identical_after_training(
    source, tmp_path, strategy, monkeypatch
):
    from jtl.run.train import train

    seen = []  # the full train state each time the trainer checkpoints it (before stripping)
    real_strip = SlimCheckpoint.strip
    monkeypatch.setattr(
        SlimCheckpoint, "strip", lambda self, st: seen.append(st) or real_strip(self, st)
    )
    s = train(_target(source, strategy, "strategy_args.freeze_batch_stats=True"), tmp_path / "t")
    final = seen[-1]
    assert int(final["step"]) == 20
    full = {"params": final["params"], "batch_stats": final["batch_stats"]}
    after = ckpt.flatten(jax.tree.map(np.asarray, full))
    before = saved_weights(source, 40)
    backbone = [k for k in before if "/backbone/" in k]
    assert backbone and any(k.startswith("batch_stats/") for k in backbone)
    for k in backbone:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)
    extra = [k for k in after if k.startswith(f"params/{strategy}/")]
    assert extra and any(np.any(after[k]) for k in extra if k.endswith(("/b", "up/kernel")))
    assert s["trainable_params"] == sum(after[k].size for k in extra) + sum(
        after[k].size for k in after if k.startswith("params/head/")
    )
    assert s["opt_state_bytes"] < costs.tree_bytes(before) / 4
    # The checkpoint holds the trained state without the frozen base, and names the base.
    saved = saved_weights(tmp_path / "t", 20)
    assert not any(k.startswith("params/backbone/") for k in saved)
    assert s["checkpoint_bytes"] < json.loads((source / "summary.json").read_text())[
        "checkpoint_bytes"] / 3  # fmt: skip


@pytest.fixture(scope="module")
def lora_run(source, tmp_path_factory):
    from jtl.run.train import train

    wd = tmp_path_factory.mktemp("lora")
    return wd, train(_target(source, "lora"), wd)


def test_lora_kill_and_resume_matches_uninterrupted(source, lora_run, tmp_path, monkeypatch):
    full_dir, full = lora_run
    config = _target(source, "lora", "log_every=4")
    resumed = interrupted_then_resumed(monkeypatch, config, tmp_path / "resumed", at_step=16)
    assert resumed["resumed_from_step"] == 10
    keys = assert_same_saved_weights(full_dir, tmp_path / "resumed", 20)
    assert any(k.startswith("params/lora/") for k in keys)
    assert resumed["test_accuracy"] == full["test_accuracy"]


@pytest.mark.parametrize("strategy", ["lora", "bitfit", "adapter", "norm_only"])
def test_cli_train_each_peft_strategy_end_to_end(source, tmp_path, strategy):
    workdir = tmp_path / strategy
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "jtl.commands.cli",
            "train",
            "--config",
            f"{TINY}:steps=20",
            "--workdir",
            str(workdir),
            f"--config.strategy={strategy}",
            f"--config.init.checkpoint={source}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    s = json.loads((workdir / "summary.json").read_text())
    assert s["strategy"] == strategy and s["test_accuracy"] > 0.3
    assert 0 < s["trainable_params"] < s["frozen_params"]
    for key in ("opt_state_bytes", "checkpoint_bytes", "peak_host_memory_bytes"):
        assert s[key] > 0, key
    assert s["flops_per_step"] > 0 and s["wall_time_s"] > 0
    src = json.loads((source / "summary.json").read_text())
    assert s["opt_state_bytes"] < src["opt_state_bytes"] / 5


def test_report_cost_table_and_accuracy_vs_cost_plot(tmp_path):
    from jtl import report as sr
    from tests.test_report import grid

    cost = {
        "finetune_full": (11_000_000, 88_000_000, 132_000_000),
        "lora": (60_000, 480_000, 45_000_000),
    }
    rows = []
    for arm, means in (("finetune_full", {"10/class": 0.6, "full": 0.9}),
                       ("lora", {"10/class": 0.55, "full": 0.8})):  # fmt: skip
        for r in grid("t", {arm: means}):
            n, opt, ck = cost[arm]
            r.update(trainable_params=n, opt_state_bytes=opt, checkpoint_bytes=ck,
                     peak_host_memory_bytes=2**30, flops_per_step=1e9)  # fmt: skip
            rows.append(r)
    paths = sr.build_report({"name": "toy"}, rows, tmp_path)
    md = paths["md"].read_text()
    assert "| arm | trainable params | optimizer state | checkpoint | peak host memory" in md
    assert "| lora | 60,000 | 0.46 MiB | 42.92 MiB | 1,024.00 MiB | 1e+09 |" in md
    assert paths["cost_plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy_vs_cost.png" in md


def test_export_merge_writes_a_plain_checkpoint_predict_and_init_load(lora_run, tmp_path):
    from jtl.commands.cli import main
    from jtl.weights import export, predict, source_model

    run, _ = lora_run
    out = tmp_path / "merged"
    assert main(["export", "--merge", "--checkpoint", str(run), "--out", str(out)]) == 0
    x = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 1)).astype(np.float32)
    info, model, plain = source_model.load(out, x)
    assert info.channels == 1 and peft.LORA not in plain["params"]
    variables, _ = export._run_state(run)  # slim checkpoint + frozen weights from the base
    config = json.loads((run / "config.json").read_text())
    peft_model = peft.PeftModel(model, config["strategy_args"]["lora_alpha"] / 4)
    unmerged = np.asarray(peft_model.apply(variables, x, train=False))
    np.testing.assert_allclose(np.asarray(model.apply(plain, x, train=False)), unmerged, atol=1e-5)
    base = {**variables, "params": {k: v for k, v in variables["params"].items() if k != "lora"}}
    base_logits = np.asarray(model.apply(base, x, train=False))
    assert np.max(np.abs(base_logits - unmerged)) > 1e-4  # the trained factors are not zero
    image = np.random.default_rng(1).integers(0, 255, (16, 16, 1), dtype=np.uint8)
    assert len(predict.predict(out, image, top=3)) == 3
    target = jax.tree.map(np.zeros_like, plain)
    loaded, report = ckpt.load_variables(out, target, exclude=("head/.*",))  # init.checkpoint
    np.testing.assert_array_equal(
        loaded["params"]["backbone"]["block1"]["conv"]["kernel"],
        plain["params"]["backbone"]["block1"]["conv"]["kernel"],
    )


def test_export_merge_refuses_an_adapter_run_in_one_line(source, tmp_path, capsys):
    from jtl.commands.cli import main
    from jtl.run.train import train

    train(_target(source, "adapter", steps=2), tmp_path / "a")
    code = main(["export", "--merge", "--checkpoint", str(tmp_path / "a"), "--out", "o"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("jtl: error: cannot merge an adapter run")
    assert not (tmp_path / "o").exists()


def test_a_peft_checkpoint_on_a_changed_base_is_refused_in_one_line(source, tmp_path, capsys):
    import shutil

    from jtl.commands.cli import main
    from jtl.run.train import train
    from jtl.runtime.errors import CheckpointError

    base = tmp_path / "base"
    shutil.copytree(source, base)
    config = _target(base, "lora", "checkpoint_every=2", steps=2)
    train(config, tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "checkpoints" / "2" / "meta" / "metadata").read_text())
    assert meta["base"]["path"] == str(base) and len(meta["base"]["sha256"]) == 64
    shutil.rmtree(base / "checkpoints" / "40")  # the base now holds other (step 20) weights
    (tmp_path / "run" / "summary.json").unlink()  # unfinished: a resume reads the base
    with pytest.raises(CheckpointError, match="was trained on base weights with sha256"):
        train(config, tmp_path / "run")
    code = main(["export", "--merge", "--checkpoint", str(tmp_path / "run"), "--out", "o"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("jtl: error: ") and "now holds weights with sha256" in err


def test_study_rows_carry_each_runs_cost_fields(tmp_path):
    from jtl import study as study_lib

    (cell,) = tiny_study_cells(tmp_path)
    cell.workdir(tmp_path).mkdir(parents=True)
    cost = dict(zip(costs.COST_FIELDS, (98_506, 1.5e9, 788_064, 1_176_721, 7 * 2**27), strict=True))
    (cell.workdir(tmp_path) / "summary.json").write_text(json.dumps(fake_summary(**cost)))
    (row,) = study_lib.collect([cell], tmp_path)
    assert {k: row[k] for k in costs.COST_FIELDS} == cost


@pytest.mark.parametrize("strategy", ["lora", "adapter"])
def test_a_swept_peft_trial_is_test_evaluated_from_its_slim_checkpoint(source, tmp_path, strategy):
    """A sweep trial never reads test; once chosen, the study evaluates it from its checkpoint.
    For a PEFT trial that is a slim checkpoint with lora / adapter subtrees: the number must be
    the one the same run reports when it evaluates test itself."""
    from jtl.run.train import train
    from jtl.study.sweep import evaluate_test

    itself = train(_target(source, strategy), tmp_path / "itself")
    trial = _target(source, strategy, "eval_test=False")
    assert train(trial, tmp_path / "trial")["test_accuracy"] is None
    out = evaluate_test(trial, tmp_path / "trial")
    assert out["test_accuracy"] == pytest.approx(itself["test_accuracy"], abs=1e-6)
    assert out["test_loss"] == pytest.approx(itself["test_loss"], rel=1e-5)


def test_a_peft_run_travels_with_its_base(source, tmp_path, monkeypatch):
    """Started with a relative base path; resumed from elsewhere by another path to the same
    base; moved with its base (found next to the run); base moved apart (--base, by sha256).
    `jtl predict` reads the unmerged run as it reads the merged export."""
    import shutil

    from jtl.commands.cli import main
    from jtl.run.train import train
    from jtl.weights import predict

    work = tmp_path / "a"
    work.mkdir()
    shutil.copytree(source, work / "base")
    monkeypatch.chdir(work)
    train(_target("base", "lora", "checkpoint_every=2", steps=2), work / "run")
    recorded = json.loads((work / "run" / "config.json").read_text())["init"]["checkpoint"]
    assert recorded == str(work / "base")  # absolute, whatever was typed
    monkeypatch.chdir(tmp_path)  # the same base by another path: the same run, not a conflict
    summary = (work / "run" / "summary.json").read_bytes()
    (work / "run" / "summary.json").unlink()  # unfinished: it resumes from its checkpoint
    again = train(_target("a/base", "lora", "checkpoint_every=2", steps=2), work / "run")
    assert again["resumed_from_step"] == 2
    (work / "run" / "summary.json").write_bytes(summary)

    shutil.move(work, tmp_path / "moved")  # run and base moved together
    run, out = tmp_path / "moved" / "run", tmp_path / "merged"
    assert main(["export", "--merge", "--checkpoint", str(run), "--out", str(out)]) == 0
    image = np.random.default_rng(1).integers(0, 255, (16, 16, 1), dtype=np.uint8)
    unmerged = dict(predict.predict(run, image, top=10, calibrated=False))
    merged = dict(predict.predict(out, image, top=10, calibrated=False))
    assert unmerged.keys() == merged.keys()
    for k, p in merged.items():
        assert unmerged[k] == pytest.approx(p, abs=1e-5)

    shutil.move(tmp_path / "moved" / "base", tmp_path / "elsewhere")  # the base moved apart
    args = ["export", "--merge", "--checkpoint", str(run), "--out", str(tmp_path / "m2")]
    assert main(args) == 2
    assert main([*args, "--base", str(tmp_path / "elsewhere")]) == 0
    moved = predict.predict(run, image, 10, calibrated=False, base=str(tmp_path / "elsewhere"))
    assert dict(moved).keys() == merged.keys()
    shutil.move(tmp_path / "elsewhere", tmp_path / "moved" / "base")  # back next to the run
    init = _target(run, "finetune_full", "checkpoint_every=2", steps=2)  # --init a LoRA run
    assert 0.0 <= train(init, tmp_path / "from_lora")["test_accuracy"] <= 1.0

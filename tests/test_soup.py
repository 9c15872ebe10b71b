"""`jtl soup`: weight averaging of fine-tuned runs with a barrier check (Wortsman et al. 2022).

The runs are two short finetune_full runs of a tiny source at different learning rates (one
sweep's runs: same source, model and split)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jtl import config as config_lib
from jtl.run import soup
from jtl.runtime.errors import UserError
from tests.helpers import saved_weights

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from jtl.run.train import train

    root = tmp_path_factory.mktemp("soup")
    train(config_lib.load_config(f"{TINY}:steps=40"), root / "source")
    out = []
    for lr in (0.01, 0.05):
        cfg = config_lib.load_config(
            f"{TINY}:steps=20",
            [
                "strategy=finetune_full",
                f"init.checkpoint={root / 'source'}",
                f"optim.lr={lr}",
                "eval_shifts=('digits|invert',)",
            ],
        )
        train(cfg, root / f"lr{lr}")
        out.append(root / f"lr{lr}")
    return out


def test_average_keeps_equal_leaves_bit_for_bit_and_means_the_rest():
    a = {"params": {"w": np.float32([1.0, 2.0]), "same": np.float32([0.1, 0.7])}}
    b = {"params": {"w": np.float32([3.0, 6.0]), "same": np.float32([0.1, 0.7])}}
    avg = soup.average([a, b])
    np.testing.assert_array_equal(avg["params"]["w"], [2.0, 4.0])
    assert avg["params"]["same"] is a["params"]["same"] or np.array_equal(
        avg["params"]["same"], a["params"]["same"]
    )
    np.testing.assert_allclose(soup.average([a, b], [0.25, 0.75])["params"]["w"], [2.5, 5.0])
    assert soup.average([a, a, a])["params"]["w"].tobytes() == a["params"]["w"].tobytes()


def test_soup_of_identical_runs_is_the_run_and_its_barrier_is_zero(runs, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(runs[0], twin)
    s = soup.make_soup([runs[0], twin], tmp_path / "soup", kind="uniform", log=lambda _: None)
    (b,) = s["soup"]["barriers"]
    assert b["loss_barrier"] == 0.0 and b["error_barrier"] == 0.0
    assert len(set(b["val_loss"])) == 1  # every point of the line is the run itself
    run = json.loads((runs[0] / "summary.json").read_text())
    assert s["val_accuracy"] == run["val_accuracy"]
    assert s["test_accuracy"] == run["test_accuracy"]
    souped, trained = saved_weights(tmp_path / "soup", 0), saved_weights(runs[0], 20)
    for k, v in souped.items():
        np.testing.assert_array_equal(v, trained[k], err_msg=k)


def test_greedy_soup_keeps_the_best_run_and_writes_a_readable_model(runs, tmp_path):
    from jtl.weights import predict

    s = soup.make_soup(runs, tmp_path / "soup", log=lambda _: None)
    solo = s["soup"]["val_accuracy"]
    assert s["soup"]["kept"][0] == max(solo, key=solo.get)
    assert s["val_accuracy"] >= max(solo.values())  # greedy never goes below its best member
    assert 0.0 <= s["soup"]["barriers"][0]["error_barrier"] <= 1.0
    assert len(s["soup"]["barriers"][0]["alphas"]) == soup.BARRIER_POINTS
    assert "digits|invert" in s["shifts"] and s["temperature"] > 0
    image = np.zeros((8, 8, 3), np.uint8)
    top = predict.predict(tmp_path / "soup", image, top=3)
    assert len(top) == 3 and abs(sum(p for _, p in top)) <= 1.0 + 1e-6


def test_uniform_soup_across_a_barrier_and_mismatched_runs_are_refused(runs, tmp_path):
    with pytest.raises(UserError, match="error barrier"):
        soup.make_soup(runs, tmp_path / "u", kind="uniform", max_error_barrier=-1.0, log=print)
    assert not (tmp_path / "u").exists()
    other = tmp_path / "other"
    shutil.copytree(runs[1], other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["data_seed"] = cfg.get("data_seed", 0) + 1
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="data_seed"):
        soup.make_soup([runs[0], other], tmp_path / "m", log=print)
    with pytest.raises(UserError, match="not empty"):
        soup.make_soup(runs, runs[0], log=print)


def test_cli_soup_is_one_line_and_exit_2_on_bad_input(runs, tmp_path, capsys):
    from jtl.commands.cli import main

    assert main(["soup", str(runs[0]), "--out", str(tmp_path / "s")]) == 2
    assert "at least two runs" in capsys.readouterr().err
    assert main(["soup", str(runs[0]), str(tmp_path / "nope"), "--out", str(tmp_path / "s")]) == 2
    assert "not a finished run" in capsys.readouterr().err


def test_lora_soup_averages_only_the_trainable_subtrees(runs, tmp_path):
    """Two LoRA runs on one base: their merged weights are averaged; every frozen base
    weight that LoRA does not touch (biases, norms) is the base's, bit for bit."""
    from jtl.run.train import train

    source = runs[0].parent / "source"
    members = []
    for lr in (0.01, 0.03):
        cfg = config_lib.load_config(
            f"{TINY}:steps=10",
            ["strategy=lora", f"init.checkpoint={source}", f"optim.lr={lr}"],
        )
        train(cfg, tmp_path / f"lora{lr}")
        members.append(tmp_path / f"lora{lr}")
    s = soup.make_soup(members, tmp_path / "soup", kind="uniform", log=lambda _: None)
    assert s["soup"]["kept"] == [str(m) for m in members]
    base, souped = saved_weights(source, 40), saved_weights(tmp_path / "soup", 0)
    frozen = [k for k in souped if k.startswith("params/backbone/") and not k.endswith("kernel")]
    assert frozen
    for k in frozen:
        np.testing.assert_array_equal(souped[k], base[k], err_msg=k)
    assert not any("lora" in k for k in souped)  # merged into the base architecture


def test_a_soup_of_peft_runs_whose_base_moved_reads_it_with_base(runs, tmp_path, capsys):
    """LoRA members trained on a base that was then moved: one line naming --base without it,
    the same soup as before the move with it (the base is found by sha256)."""
    from jtl.commands.cli import main
    from jtl.run.train import train

    base = tmp_path / "base"
    shutil.copytree(runs[0].parent / "source", base)
    members = []
    for lr in (0.01, 0.03):
        cfg = config_lib.load_config(
            f"{TINY}:steps=10", ["strategy=lora", f"init.checkpoint={base}", f"optim.lr={lr}"]
        )
        train(cfg, tmp_path / f"lora{lr}")
        members.append(str(tmp_path / f"lora{lr}"))
    before = soup.make_soup(members, tmp_path / "before", kind="uniform", log=lambda _: None)
    moved = tmp_path / "elsewhere" / "moved_base"
    moved.parent.mkdir()
    base.rename(moved)
    capsys.readouterr()
    assert main(["soup", *members, "--kind", "uniform", "--out", str(tmp_path / "s1")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--base" in err
    assert not (tmp_path / "s1").exists()
    out = tmp_path / "after"
    argv = ["soup", *members, "--kind", "uniform", "--out", str(out), "--base", str(moved)]
    assert main(argv) == 0
    after = json.loads((out / "summary.json").read_text())
    assert after["val_accuracy"] == before["val_accuracy"]
    a, b = saved_weights(tmp_path / "before", 0), saved_weights(out, 0)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

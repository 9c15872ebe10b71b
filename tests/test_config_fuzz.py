"""Property-based fuzzing of bad input: every invalid config or argument list is one line on
stderr with exit code 2 and no traceback, before anything is built; every valid config passes.

The invalid values are generated from domains written here, independently of the rules in
jtl.run.config_check, so a rule that goes missing is caught, not mirrored.
"""

import math
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jtl.commands.cli import main
from jtl.config import load_config
from jtl.run import config_check

TINY = str(Path(__file__).resolve().parent.parent / "configs" / "tiny.py")
COUNT_KEYS = ("batch_size", "eval_batch_size", "total_steps", "eval_every", "log_every",
              "checkpoint_every", "keep_checkpoints", "image_size")  # fmt: skip
NON_NEGATIVE_INT_KEYS = ("train_per_class", "early_stopping_patience", "min_steps", "seed")
FRACTION_KEYS = ("val_fraction", "train_fraction")
NAME_KEYS = ("model.name", "optim.name", "strategy", "input_scale", "nonfinite")
WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)


def _bad_counts():
    return st.tuples(
        st.sampled_from(COUNT_KEYS),
        st.one_of(
            st.integers(max_value=0).map(str),
            st.floats(0.01, 1e6).filter(lambda v: v != int(v)).map(repr),
            WORD,
        ),
    )


def _bad_non_negative():
    return st.tuples(
        st.sampled_from(NON_NEGATIVE_INT_KEYS),
        st.one_of(st.integers(max_value=-1).map(str), WORD.map(lambda w: f"x{w}")),
    )


def _bad_fractions():
    return st.tuples(
        st.sampled_from(FRACTION_KEYS),
        st.one_of(
            st.floats(1.0001, 1e9).map(repr),
            st.floats(-1e9, -1e-6).map(repr),
            st.sampled_from(["nan", "inf", "-inf", "half"]),
        ).map(lambda v: {"nan": "float('nan')", "inf": "float('inf')"}.get(v, v)),
    )


def _bad_lr():
    return st.tuples(
        st.just("optim.lr"),
        st.one_of(st.floats(-1e9, -1e-9).map(repr), WORD, st.just("float('inf')")),
    )


def _bad_names():
    return st.tuples(st.sampled_from(NAME_KEYS), WORD.map(lambda w: f"no_such_{w}"))


def _bad_datasets():
    return st.tuples(
        st.just("dataset"),
        st.sampled_from(["digits|spin(3)", "digits|rotate", "digits|classes(4-1)",
                         "digits|noise(-2)", "|invert", "digits|block_shuffle(x)"]),
    )  # fmt: skip


BAD = st.one_of(
    _bad_counts(), _bad_non_negative(), _bad_fractions(), _bad_lr(), _bad_names(), _bad_datasets()
)


def _one_line_exit_2(argv, capsys) -> str:
    code = main(argv)
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert code == 2, (argv, out.err)
    assert len(lines) == 1 and lines[0].startswith("jtl: error: "), (argv, out.err)
    assert "Traceback" not in out.err and "internal error" not in out.err
    return lines[0]


@settings(
    max_examples=220, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(BAD)
def test_invalid_config_values_are_one_line_and_exit_2(tmp_path, capsys, bad):
    key, value = bad
    workdir = tmp_path / "never_written"
    line = _one_line_exit_2(
        ["train", "--config", TINY, "--workdir", str(workdir), f"--config.{key}={value}"], capsys
    )
    assert key.split(".")[-1] in line or key.split(".")[0] in line
    assert not workdir.exists()  # nothing built or written


ARGV = st.one_of(
    st.tuples(st.sampled_from(["train", "study", "advise", "import", "predict", "export"]),
              st.lists(st.sampled_from(["--nope", "--workdir", "--config", "-x", "--top=z"]),
                       max_size=3)).map(lambda t: [t[0], *t[1]]),
    WORD.filter(lambda w: w not in ("train", "data", "study")).map(lambda w: [f"{w}x"]),
    st.just(["train", "--config", TINY, "--workdir", "/tmp/x", "--config.batch_size"]),
    st.just(["train", "--config", TINY, "--workdir", "/tmp/x", "--config.nokey=1"]),
    st.just(["advise", "--checkpoint", "/nonexistent", "--dataset", "digits", "--per_class", "0"]),
    st.just(["import", "--from", "/nonexistent.pth", "--model", "bogus", "--out", "/tmp/new"]),
)  # fmt: skip


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ARGV)
def test_invalid_argument_lists_are_one_line_and_exit_2(capsys, argv):
    _one_line_exit_2(argv, capsys)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4096), st.integers(1, 10**6), st.floats(0.0, 0.99), st.floats(1e-3, 1.0),
    st.floats(0.0, 10.0), st.sampled_from(["adam", "momentum", "sgd"]),
    st.sampled_from(["digits", "digits|invert", "mnist|classes(0-4)|block_shuffle(7)"]),
)  # fmt: skip
def test_valid_configs_pass_validation(batch, steps, val, frac, lr, opt, dataset):
    cfg = load_config(
        TINY,
        [f"batch_size={batch}", f"total_steps={steps}", f"val_fraction={val}",
         f"train_fraction={frac}", f"optim.lr={lr}", f"optim.name={opt}", f"dataset={dataset}"],
    )  # fmt: skip
    assert config_check.problems(cfg) == []
    assert math.isfinite(cfg.optim.lr)

"""The run config's schema: every field the trainer reads, with its default and why.

Built by section, in the order the fields appear in config.json. Configs are ml_collections
`ConfigDict`s, locked so a typo'd override fails instead of being silently added.
"""

from __future__ import annotations

import ml_collections as mlc

from jtl.optim import optimizers


# The schema is built by section, in the order the fields appear in config.json; each builder
# adds its fields to `c` in place, so `base_config` fixes the overall field order.
def _data_fields(c: mlc.ConfigDict) -> None:
    """Seeds, target data set, subsets / folds and input pipeline: what the model trains on."""
    c.seed = 0
    c.data_seed = 0  # fixes the validation split and the nested subsets across seeds
    # Target data: an offline jtl name (mnist, fashion_mnist, digits, lfw_subset), folder:PATH,
    # npz:PATH, or any tfds catalog name (e.g. cifar10) on a machine with internet.
    c.dataset = "mnist"
    c.data_dir = ""  # prepared tfds data; default $JTL_DATA_DIR/tfds
    c.val_fraction = 0.1
    c.train_fraction = 1.0  # in (0, 1]; nested and stratified
    c.train_per_class = 0  # > 0: examples per class instead of a fraction
    # k-fold cross-validation inside the labelled budget (tiny data): the nested training subset
    # is split into `num_folds` stratified folds; fold `fold` validates, the rest train. The
    # held-out val split is then unused and the test set never takes part in model selection.
    c.num_folds = 0
    c.fold = 0
    c.image_size = 28
    c.channels = 1
    c.augment = ""  # e.g. "crop(2)|flip|rotate(10)|scale(0.9,1.1)"
    # uint8 -> model input: "auto" = the source's scale (import.json / model.json of
    # init.checkpoint: torchvision ImageNet mean/std, lite0 (x - 127) / 128), else
    # minus_one_one ([-1, 1], jtl's own runs). See jtl.data.augment.INPUT_SCALES.
    c.input_scale = "auto"
    c.seq_len = 0  # text data sets (austen): tokens per example, 0 = as stored (128)
    # folder: data sets: leave unreadable images out (listed in the workdir's
    # skipped_images.txt) instead of failing on the first one.
    c.skip_bad_images = False


def _budget_fields(c: mlc.ConfigDict) -> None:
    """Batch sizes, step budget and the eval / log / checkpoint cadence of a fixed-length run."""
    c.batch_size = 128  # global
    c.eval_batch_size = 500
    c.total_steps = 1000
    c.eval_every = 250  # steps; 0: eval_every_fraction of total_steps (jtl/config/cadence.py)
    c.log_every = 50
    c.checkpoint_every = 500  # steps; 0: checkpoint_every_fraction of total_steps
    # Cadences as fractions of total_steps, for base configs whose budget a study overrides
    # (resolved to steps before the run is recorded; 0 = unused): eval_every_fraction and
    # checkpoint_every_fraction apply where their steps field is 0; warmup_fraction > 0 sets
    # optim.warmup_steps to that fraction of the run, capped at its value when > 0.
    c.eval_every_fraction = 0.0
    c.checkpoint_every_fraction = 0.0
    c.warmup_fraction = 0.0
    c.keep_checkpoints = 2
    c.progress = True


def _early_stopping_fields(c: mlc.ConfigDict) -> None:
    """Converged budgets: epoch caps, patience and the step floors that keep them sane."""
    # Converged budgets (jtl/run/early_stopping.py). > 0: stop when validation accuracy has not
    # improved by more than `min_delta` for this many evaluations and report the best evaluated
    # model; summary.json records `converged` (false = hit the cap while still improving).
    c.early_stopping_patience = 0
    c.min_delta = 0.0
    c.max_epochs = 0.0  # > 0: the cap in epochs of the training subset (sets total_steps)
    c.eval_every_epochs = 0.0  # > 0: validate every this many epochs (sets eval_every)
    # Floors in steps for the two above: on a tiny training set an epoch is one or two steps,
    # so an epoch cap stops after a handful of steps and patience counts single steps.
    c.min_steps = 0
    c.min_eval_every = 0
    # Patience never stops a run before this step (0 = any step). Why: early in a schedule the
    # LR is high and validation accuracy bounces, so 4 evaluations without a new best there
    # are noise, not a plateau (a full-digits scratch run stopped at step 152 of 1,140 at 94 %
    # while its other seeds reached 100 %).
    c.stop_min_steps = 0
    # ... nor before this fraction of its cap (`total_steps`, the LR schedule's length). Why: a
    # cosine schedule keeps the LR high for most of a run, and a high-LR run's validation
    # accuracy bounces by 10+ points between evaluations (Fashion-MNIST 100/class from scratch
    # at lr 0.1 stopped at step 252 of 625 at 74.0 % test; trained through, 79.8 %). 0 = off.
    c.stop_min_fraction = 0.0
    # Reported weights: among evaluations at exactly the best validation accuracy, the one with
    # the lowest validation loss (a small validation split saturates at 100 %, and its first
    # evaluation there is the least trained; jtl/run/early_stopping.py). Runs recorded before
    # this field chose the first (config.records.LEGACY_VALUES).
    c.best_ties_on_val_loss = True


def _eval_and_divergence_fields(c: mlc.ConfigDict) -> None:
    """What is evaluated besides validation (test, shifts) and what a non-finite step does."""
    c.eval_test = True  # False: never read the test split (sweep trials; see jtl/study/sweep.py)
    # Distribution shift: data sets with the target's classes whose test split is evaluated on
    # the reported weights (accuracy, NLL, ECE, raw and temperature-scaled), e.g.
    # ("mnist", "digits|noise(0.3)") for digits. Never the source's own training data.
    c.eval_shifts = ()
    # A non-finite loss or gradient norm: "stop" the run (summary.json says diverged, the last
    # finite checkpoint is kept, exit non-zero) or "skip" the step (state unchanged, counted).
    c.nonfinite = "stop"
    # nonfinite="skip": past this fraction of skipped steps (from step 10 on) the run is marked
    # diverged and stops (exit 2) instead of reporting a useless model as a success.
    c.nonfinite_max_skipped = 0.25


def _model_fields(c: mlc.ConfigDict) -> None:
    """Compute dtype and the architecture (`model.name` / `model.kwargs`)."""
    # Compute dtype of activations (float32 or bfloat16); params, optimizer state and the loss
    # stay float32. bfloat16 pays off on TPU and recent GPUs, not on CPU.
    c.compute_dtype = "float32"
    c.model = mlc.ConfigDict()
    c.model.name = "resnet20"
    c.model.kwargs = mlc.ConfigDict({"norm": "batch"})


def _optim_fields(c: mlc.ConfigDict) -> None:
    """The `optim` block: the optimizer library's defaults plus the usual run recipe."""
    # The optimizer library's defaults (jtl.optim.optimizers.DEFAULTS, the one definition;
    # frozen / lr_mults / wd_mults / schedules are big_vision-style ordered rules on "/"-joined
    # parameter paths, fullmatch, first wins), with a run's usual recipe on top: momentum SGD,
    # weight decay 5e-4, cosine schedule.
    c.optim = mlc.ConfigDict({"name": "momentum", "lr": 0.1, **optimizers.DEFAULTS})
    c.optim.weight_decay = 5e-4
    c.optim.schedule = "cosine"


def _init_fields(c: mlc.ConfigDict) -> None:
    """The `init` block: the checkpoint a transfer run starts from."""
    # Transfer: which checkpoint to start from, and which keys to re-initialize.
    c.init = mlc.ConfigDict()
    c.init.checkpoint = ""  # run workdir, `jtl import` dir, or checkpoints/ dir; "" = scratch
    c.init.exclude = ("head/.*",)
    c.init.strict = True


def _strategy_fields(c: mlc.ConfigDict) -> None:
    """`strategy` and `strategy_args`: every knob of every transfer strategy, in one place."""
    # See jtl/transfer/strategies.py for what each strategy sets; every field below stays
    # overridable.
    c.strategy = "scratch"
    a = c.strategy_args = mlc.ConfigDict()
    a.backbone_lr_mult = 0.1  # the folk rule: backbone at 10x lower LR than the new head
    # scratch: "uniform" re-draws the (zero-initialized) head as PyTorch's nn.Linear default,
    # U(+-1/sqrt(fan_in)); "zeros" keeps it. Measured (issue 11, docs/results.md): a zero head
    # cost a scratch CNN ~2 points on Fashion-MNIST at 300 steps. Transfer heads stay zero.
    a.scratch_head_init = "uniform"
    a.layer_decay = 0.0  # > 0: layer-wise LR decay per depth level (replaces backbone_lr_mult)
    a.discriminative = 0.0  # > 0: ULMFiT, LR divided by this per level (e.g. 2.6)
    a.freeze_blocks = 0  # finetune_top: entries of model.block_names() frozen from the bottom
    a.freeze_batch_stats = False  # frozen blocks run in inference mode (running BN stats)
    a.unfreeze_every = 0  # gradual_unfreeze: steps per stage
    a.probe_kinds = ("logistic", "ridge")  # linear_probe / lp_ft; add "svm" for tiny data
    # lp_ft / wise_ft: BatchNorm statistics the probe's features use. "target" re-estimates them
    # on the target's training split first (AdaBN), so the head still fits when fine-tuning
    # switches BN to batch statistics; "source" keeps the pretrained running statistics.
    a.probe_batch_stats = "target"
    a.l2sp_alpha = 0.01  # l2sp: weight of ||w - w_pretrained||^2
    a.l2sp_beta = 0.01  # l2sp: weight of ||w_head||^2
    # wise_ft mixing coefficients: the whole curve (accuracy and ECE, ID and every eval_shift)
    a.wise_alphas = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    a.reinit_blocks = 0  # reinit_top: top blocks re-initialized before fine-tuning
    a.transfer_blocks = 0  # layer_transfer: first n blocks transferred
    a.transfer_frozen = True  # layer_transfer: keep the transferred blocks frozen
    a.lora_rank = 4  # lora: rank r of each update a @ b
    a.lora_alpha = 8.0  # lora: the update is scaled by alpha / r
    a.lora_targets = ()  # lora: kernel regexes; () = BERT query/value, else all backbone kernels
    a.adapter_blocks = ()  # adapter: block_names() entries followed by an adapter; () = not stem
    a.adapter_reduction = 8  # adapter: bottleneck width = channels // reduction


def _runtime_fields(c: mlc.ConfigDict) -> None:
    """Process and device setup: how a run is executed, kept apart from what it computes."""
    c.distributed = False  # jax.distributed.initialize() (auto-detects TPU / SLURM)
    # CPU only: XLA devices to split each batch over; 0 = one per core (measured 1.7x faster
    # than one device on 2 cores, bench/cpu_devices.py), -1 = XLA's default. XLA_FLAGS wins.
    c.cpu_devices = 0


def base_config() -> mlc.ConfigDict:
    """Every field the trainer reads, with defaults; config files override what they need."""
    c = mlc.ConfigDict()
    _data_fields(c)
    _budget_fields(c)
    _early_stopping_fields(c)
    _eval_and_divergence_fields(c)
    _model_fields(c)
    _optim_fields(c)
    _init_fields(c)
    _strategy_fields(c)
    _runtime_fields(c)
    return c

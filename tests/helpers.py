"""Helpers shared by test modules (not fixtures: plain functions)."""

from pathlib import Path

from jtl import checkpoint as ckpt


def saved_weights(workdir: Path, step: int) -> dict:
    """Flat {path: array} of the params and batch stats saved at `step` in a run's checkpoints."""
    import orbax.checkpoint as ocp

    mgr = ocp.CheckpointManager(
        workdir / "checkpoints", item_handlers={"state": ocp.StandardCheckpointHandler()}
    )
    state = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    mgr.close()
    return ckpt.flatten({"params": state["params"], "batch_stats": state["batch_stats"]})

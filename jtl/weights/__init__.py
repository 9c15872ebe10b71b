"""Weights on disk: orbax checkpoints, slim (trainable-only) checkpoints, a source model's
description and loading, export, and prediction from a saved run."""

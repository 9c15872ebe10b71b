"""What a run is judged and summarised by: calibration, compute cost, the metrics sinks and
summary.json's contract. Below the trainer and the strategies, which both report through it."""

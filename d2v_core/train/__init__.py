"""Training: schedules, optimiser groups, checkpoints, metrics, distributed set-up, the trainer."""

"""The engine: data, the training loop, evaluation, checkpoints and logging."""

"""Training: configs, the loop, checkpoints, distillation and the runs of the recipes."""

"""Distillation objectives: small pure functions and modules, one family per file."""

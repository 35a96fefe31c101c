"""Evaluation: scoring, metrics, thresholds, measurement and report tables (imports only kd.data of kd)."""

"""Data: sources → cleaned URLs → splits → tokenised batches (imports nothing else of kd)."""

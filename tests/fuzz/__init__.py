"""Fuzz suite: targets, corpus, strategies; `make fuzz` runs it (python -m tests.fuzz)."""

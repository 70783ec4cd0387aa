"""Deterministic model builders: test models, reference networks, hybrids, pruning."""

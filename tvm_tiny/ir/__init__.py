"""Shared types of every stage: MHSA and linear descriptors, quantization, kernel configs, errors."""

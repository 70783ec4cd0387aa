"""Shared types of every stage: MHSA shapes and weights, quantization, kernel configs, errors."""

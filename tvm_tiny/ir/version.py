"""The tvm_tiny version, in the lowest layer so that every stage can stamp it (records, C headers)
without importing the package root."""

__version__ = "0.1.0"

"""Find every attention, canonicalize it, and mark it for the tvm_tiny code generator."""

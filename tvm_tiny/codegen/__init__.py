"""``relax.ext.tvm_tiny``: one C emitter per kernel family, weight layouts, scratch sizes."""

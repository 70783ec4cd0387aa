"""numpy golden models of every kernel's arithmetic (bit-exact for integer paths)."""

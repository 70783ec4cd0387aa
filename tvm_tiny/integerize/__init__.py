"""QDQ regions of the rest of the graph → integer Relax (int8 tensors, int32 accumulation,
fixed-point requantization, lookup tables for unary functions); DESIGN.md §1 "integerize"."""

"""Firmware projects for a board: one builder, and the runners that execute them."""

"""TVM lowering of the rest of the graph, the AOT entry point and its static memory plan."""

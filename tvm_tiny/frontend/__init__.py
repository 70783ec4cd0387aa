"""Models in: ONNX (object or path), Relax IRModule; checks that name the node at fault."""

"""Reading and writing files safely: checkpoints, YAML, tensors, atomic outputs."""

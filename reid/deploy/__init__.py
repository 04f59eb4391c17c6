"""The trained student outside the pipeline: export to ONNX (`export`), embed a folder or an index (`embed`),
rank a gallery (`search`). Teacher-free by construction: only the deployed embedding is in the graph."""

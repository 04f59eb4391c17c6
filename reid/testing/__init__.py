"""Stand-in teacher models for tests and benchmarks: tiny networks exported with exactly the real models' ONNX
input/output names and shapes (SCRFD, HRNet, SCHP, GPEN), so the real loading and decoding code runs without
the official weights. Never used by the pipeline itself."""

"""dmad.export: ONNX and TFLite conversion of generators, verified against PyTorch."""

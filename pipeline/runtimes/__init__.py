"""Where models run: the one ONNX Runtime session factory (`session`) and the runners
that give eager PyTorch, TorchScript and ONNX Runtime one `infer(feed)` shape (`runners`)."""

"""Text generation with a key/value cache: the one loop parity, `generate`, the benchmark and the servers run.

- `decoder`: the torch module the stages export (flat cache tensors in and out), and the spec's feeds;
- `engines`: one decoding step on ONNX Runtime (CPU, or CUDA with the cache bound on the device) or eager torch;
- `sampling`: greedy, temperature, top-k, top-p, seeded;
- `text`: prompts tokenized and left-padded, tokens back to text a whole character at a time;
- `loop`: the limits, checked before any work, and the loop that ties these together.
"""

"""Train, trace, export, verify and package PyTorch models for serving.

Stages meet only through files and `artifacts/<model>/manifest.json`:

    train -> checkpoint -> trace -> model.ts
                        -> export -> model.onnx -> parity -> package -> model_store/<model>.mar
"""

__version__ = "0.1.0"

"""TorchServe entry modules that archives ship; the logic is in pipeline.serving."""

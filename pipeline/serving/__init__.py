"""Serving: the I/O contract (`contract`), the TorchServe handler (`handler`), starting and
stopping TorchServe (`server`) with the shipped configuration (`torchserve.properties`),
and the HTTP client (`client`)."""

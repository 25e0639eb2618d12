"""What both backends share: the I/O contract, request reading (tensors, texts, images), the predictor, the Open Inference Protocol, the HTTP client."""

"""What both backends share: the I/O contract, request reading (tensors, texts, images), the predictor, the Open Inference Protocol, the HTTP client."""

STAGE = "serve"  # what every serving error names as its stage, on either backend
RETRY_AFTER_S = 1  # a 503's Retry-After, on either backend: a full queue, or a server still starting
VERSION_HEADER = "X-Model-Version"  # every answer of the model's code: the served archive's version (archive.content_version)
REQUEST_ID_HEADER = "X-Request-Id"  # every answer: the client's well-formed id, else one the server made

"""Serving one verified archive, on TorchServe (one machine) or on Ray Serve (a cluster).

- `common/`: what both backends share: the archive's I/O contract, reading a request
  (JSON tensors, texts, images), the predictor, the Open Inference Protocol, the client.
- `torchserve/`: the archive's handler, the server's lifecycle and config files, the proxy in front.
- `ray/`: the Ray Serve application, its cluster's lifecycle, the KubeRay manifest.
- `backends`: both behind one interface (`BACKENDS`), which the command line calls.
"""

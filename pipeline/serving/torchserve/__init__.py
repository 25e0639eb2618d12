"""TorchServe: the archive's handler, the server's lifecycle and config files, the proxy in front of it."""

"""Model zoo: small standard architectures as user-style model files, one per file."""

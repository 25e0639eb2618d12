"""Built-in example models; each module defines `SPEC`."""

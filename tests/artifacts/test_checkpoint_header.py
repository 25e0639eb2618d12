"""A real safetensors file is never mistaken for a pickle by the header check."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pipeline.artifacts.checkpoint import check_header
from pipeline.errors import IntegrityError


def test_header_length_with_a_pickle_like_first_byte_is_accepted(tmp_path):
    # safetensors starts with its header length (little-endian u64); a length of
    # 0x..80 makes the first byte 0x80, the same as pickle's PROTO opcode.
    for pad in range(300):
        path = tmp_path / f"c{pad}.safetensors"
        save_file({"w": torch.zeros(1)}, str(path), metadata={"pipeline": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            check_header(path, "trace")
            return
    pytest.fail("no padding produced a 0x80 first byte")


def test_pickle_is_still_refused(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    torch.save({"w": torch.zeros(1)}, str(path), _use_new_zipfile_serialization=False)
    with pytest.raises(IntegrityError, match="pickle"):
        check_header(path, "trace")

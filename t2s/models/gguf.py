"""Read a GGUF file's header, metadata and tensor table without loading the model.

Layout (little-endian): magic b"GGUF", uint32 version, tensor count and key/value count (uint64;
uint32 in version 1), the typed key/value pairs, one info record per tensor (name, dims, type,
offset), then the tensor data, aligned to `general.alignment` (32 by default).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2s.errors import ModelError

MAGIC = b"GGUF"

# Value types of the metadata: type id -> struct format of one scalar.
_SCALARS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
    10: "<Q", 11: "<q", 12: "<d",
}  # fmt: skip
_STRING, _ARRAY = 8, 9

# Arrays longer than this (the tokenizer's vocabulary, merges) are skipped, not kept in memory.
_KEEP_ARRAY_ITEMS = 64

# ggml tensor types: id -> (elements per block, bytes per block). Used to find where the last
# tensor's data ends, which tells a truncated file from a whole one.
_TENSOR_BLOCKS = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
    15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18),
    21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4),
    27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66),
}  # fmt: skip

# `general.file_type` (llama.cpp's llama_ftype): the quantization of the file as a whole.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE",
}  # fmt: skip


@dataclass
class SkippedArray:
    """A long metadata array we did not keep: its item type and length only."""

    item_type: int
    length: int


@dataclass
class GGUFInfo:
    path: Path
    name: str  # general.name, else the file name without .gguf
    architecture: str
    parameters: int  # counted from the tensor table
    size_label: str  # general.size_label when present ("135M"), else derived from `parameters`
    quantization: str
    context_length: int | None  # <arch>.context_length: the context the model was trained with
    version: int
    tensor_count: int
    file_size: int
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    @property
    def kv_bytes_per_token(self) -> int | None:
        """Bytes of f16 KV cache one token of context takes (keys and values of every layer),
        or None when the metadata does not say (a model without attention, or an odd one)."""
        meta, arch = self.metadata, self.architecture
        layers, heads = meta.get(f"{arch}.block_count"), meta.get(f"{arch}.attention.head_count")
        width = meta.get(f"{arch}.embedding_length")
        if not all(isinstance(v, int) and v > 0 for v in (layers, heads, width)):
            return None
        kv_heads = meta.get(f"{arch}.attention.head_count_kv", heads)
        if isinstance(kv_heads, list):  # one count per layer
            kv_heads = sum(kv_heads) / len(kv_heads) if kv_heads else None
        if not isinstance(kv_heads, int | float):
            return None
        key = meta.get(f"{arch}.attention.key_length", width // heads)
        value = meta.get(f"{arch}.attention.value_length", width // heads)
        return int(layers * kv_heads * (key + value) * 2)


def format_parameters(count: int) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return str(count)


class _Reader:
    def __init__(self, buffer, path: Path):
        self.buffer = buffer
        self.offset = 0
        self.path = path

    def take(self, size: int) -> bytes:
        end = self.offset + size
        if size < 0 or end > len(self.buffer):
            raise ModelError(
                f"{self.path} is a truncated GGUF file (header ends early at byte {self.offset}); "
                "download it again"
            )
        data = self.buffer[self.offset : end]
        self.offset = end
        return data

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.scalar("<Q")).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        self.take(self.scalar("<Q"))

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_type, length = self.scalar("<I"), self.scalar("<Q")
            if length <= _KEEP_ARRAY_ITEMS:
                return [self.value(item_type) for _ in range(length)]
            self.skip_array(item_type, length)
            return SkippedArray(item_type, length)
        raise ModelError(f"{self.path} has an unknown GGUF value type {kind}; is it corrupt?")

    def skip_array(self, item_type: int, length: int) -> None:
        if item_type in _SCALARS:
            self.take(struct.calcsize(_SCALARS[item_type]) * length)
        elif item_type == _STRING:
            for _ in range(length):
                self.skip_string()
        else:
            for _ in range(length):
                self.value(item_type)


def read_gguf(path: Path | str) -> GGUFInfo:
    """The file's metadata; ModelError (one line) when it is missing, not a GGUF, or truncated."""
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            size = path.stat().st_size
            if size < 4:
                raise ModelError(
                    f"{path} is not a GGUF file (only {size} bytes); pass a .gguf model"
                )
            with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
                return _parse(_Reader(buffer, path), path, size)
    except FileNotFoundError:
        raise ModelError(f"model file {path} not found") from None
    except IsADirectoryError:
        raise ModelError(f"{path} is a directory, not a GGUF file") from None
    except PermissionError:
        raise ModelError(f"cannot read {path}: permission denied") from None


def _parse(reader: _Reader, path: Path, size: int) -> GGUFInfo:
    if reader.take(4) != MAGIC:
        raise ModelError(f"{path} is not a GGUF file (bad magic bytes); pass a .gguf model")
    version = reader.scalar("<I")
    if version not in (1, 2, 3):
        raise ModelError(f"{path} is GGUF version {version}, which t2s cannot read")
    count = "<I" if version == 1 else "<Q"
    tensor_count, kv_count = reader.scalar(count), reader.scalar(count)

    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = reader.string()
        metadata[key] = reader.value(reader.scalar("<I"))

    parameters = 0
    data_end = 0  # relative to the start of the tensor data
    for _ in range(tensor_count):
        reader.skip_string()
        dims = [reader.scalar(count) for _ in range(reader.scalar("<I"))]
        tensor_type, offset = reader.scalar("<I"), reader.scalar("<Q")
        elements = 1
        for dim in dims:
            elements *= dim
        parameters += elements
        block, block_bytes = _TENSOR_BLOCKS.get(tensor_type, (1, 0))
        data_end = max(data_end, offset + elements // block * block_bytes)

    alignment = metadata.get("general.alignment", 32) or 32
    data_start = -(-reader.offset // alignment) * alignment
    if tensor_count and data_start + data_end > size:
        raise ModelError(
            f"{path} is a truncated GGUF file ({size} bytes, its tensors need "
            f"{data_start + data_end}); download it again"
        )

    architecture = str(metadata.get("general.architecture", "unknown"))
    file_type = metadata.get("general.file_type")
    context = metadata.get(f"{architecture}.context_length")
    return GGUFInfo(
        path=path,
        name=str(metadata.get("general.name") or path.name.removesuffix(".gguf")),
        architecture=architecture,
        parameters=parameters,
        size_label=str(metadata.get("general.size_label") or format_parameters(parameters)),
        quantization=FILE_TYPES.get(file_type, f"type {file_type}")
        if file_type is not None
        else "unknown",
        context_length=int(context) if isinstance(context, int) else None,
        version=version,
        tensor_count=tensor_count,
        file_size=size,
        metadata=metadata,
    )

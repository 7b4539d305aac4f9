import struct

import pytest

from t2s.errors import ModelError
from t2s.models.gguf import SkippedArray, format_parameters, read_gguf


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _value(kind: int, value) -> bytes:
    if kind == 8:
        return _string(value)
    if kind == 9:
        item_kind, items = value
        return struct.pack("<IQ", item_kind, len(items)) + b"".join(
            _value(item_kind, v) for v in items
        )
    return struct.pack({4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}[kind], value)


def write_gguf(path, metadata, tensors, version=3):
    """A minimal GGUF: `metadata` {key: (type, value)}, `tensors` [(name, dims, ggml type)]."""
    body = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata))
    for key, (kind, value) in metadata.items():
        body += _string(key) + struct.pack("<I", kind) + _value(kind, value)
    offset, sizes = 0, {0: 4, 1: 2}
    for name, dims, kind in tensors:
        body += _string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        body += struct.pack("<IQ", kind, offset)
        count = 1
        for dim in dims:
            count *= dim
        offset += -(-count * sizes[kind] // 32) * 32
    body += b"\0" * (-len(body) % 32) + b"\1" * offset
    path.write_bytes(body)
    return path


def small_model(path):
    return write_gguf(
        path,
        {
            "general.architecture": (8, "llama"),
            "general.name": (8, "Tiny Test"),
            "general.file_type": (4, 15),
            "llama.context_length": (4, 2048),
            "llama.rope.freq_base": (6, 10000.0),
            "tokenizer.ggml.add_bos_token": (7, True),
            "general.languages": (9, (8, ["en", "fr"])),
            "tokenizer.ggml.tokens": (9, (8, [f"t{i}" for i in range(100)])),
            "tokenizer.ggml.token_type": (9, (5, list(range(100)))),
        },
        [("token_embd.weight", [64, 100], 0), ("output_norm.weight", [64], 1)],
    )


def test_reads_architecture_parameters_quantization_and_context(tmp_path):
    info = read_gguf(small_model(tmp_path / "tiny.gguf"))
    assert (info.architecture, info.name, info.quantization) == ("llama", "Tiny Test", "Q4_K_M")
    assert info.parameters == 64 * 100 + 64
    assert info.size_label == "6.46K"
    assert info.context_length == 2048
    assert info.metadata["general.languages"] == ["en", "fr"]
    assert info.metadata["tokenizer.ggml.add_bos_token"] is True
    assert info.metadata["llama.rope.freq_base"] == 10000.0
    assert info.metadata["tokenizer.ggml.tokens"] == SkippedArray(8, 100)  # long arrays skipped
    assert info.tensor_count == 2


def test_reads_the_embedded_model(embedded_model_path):
    info = read_gguf(embedded_model_path)
    assert (info.architecture, info.size_label, info.quantization) == ("llama", "135M", "Q4_1")
    assert info.context_length == 8192
    assert 130e6 < info.parameters < 140e6
    assert "<|im_start|>" in info.chat_template


def test_missing_name_and_size_label_fall_back_to_file_name_and_count(tmp_path):
    path = write_gguf(
        tmp_path / "bare.gguf", {"general.architecture": (8, "qwen3")}, [("w", [3000, 1000], 0)]
    )
    info = read_gguf(path)
    assert (info.name, info.size_label, info.quantization, info.context_length) == (
        "bare",
        "3M",
        "unknown",
        None,
    )


def test_not_a_gguf_is_refused_in_one_line(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("these are not model weights\n")
    with pytest.raises(
        ModelError, match=r"notes.gguf is not a GGUF file \(bad magic bytes\)"
    ) as caught:
        read_gguf(path)
    assert "\n" not in str(caught.value)


def test_an_empty_file_is_not_a_gguf(tmp_path):
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ModelError, match="not a GGUF file"):
        read_gguf(tmp_path / "empty.gguf")


@pytest.mark.parametrize("keep", [10, 40, 200])
def test_a_header_cut_short_is_truncated(tmp_path, keep):
    data = small_model(tmp_path / "whole.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:keep])
    with pytest.raises(ModelError, match="cut.gguf is a truncated GGUF file"):
        read_gguf(tmp_path / "cut.gguf")


def test_tensor_data_cut_short_is_truncated(tmp_path, embedded_model_path):
    cut = tmp_path / "cut.gguf"
    with open(embedded_model_path, "rb") as source:
        cut.write_bytes(source.read(embedded_model_path.stat().st_size - 1000))
    with pytest.raises(
        ModelError, match=r"truncated GGUF file \(\d+ bytes, its tensors need \d+\)"
    ):
        read_gguf(cut)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        read_gguf(tmp_path / "nothing.gguf")
    with pytest.raises(ModelError, match="is a directory"):
        read_gguf(tmp_path)


def test_unknown_version_is_refused(tmp_path):
    path = write_gguf(tmp_path / "future.gguf", {}, [], version=9)
    with pytest.raises(ModelError, match="GGUF version 9"):
        read_gguf(path)


def test_format_parameters():
    assert [format_parameters(n) for n in (950, 135_000_000, 7_240_000_000)] == [
        "950",
        "135M",
        "7.24B",
    ]


def test_kv_bytes_per_token_from_the_attention_metadata(tmp_path):
    def info(**attention):
        metadata = {
            "general.architecture": (8, "llama"),
            "llama.block_count": (4, 30),
            "llama.embedding_length": (4, 576),
            "llama.attention.head_count": (4, 9),
            **{f"llama.attention.{key}": (4, value) for key, value in attention.items()},
        }
        return read_gguf(write_gguf(tmp_path / "m.gguf", metadata, []))

    assert info(head_count_kv=3).kv_bytes_per_token == 30 * 3 * (64 + 64) * 2
    assert info().kv_bytes_per_token == 30 * 9 * (64 + 64) * 2  # no GQA: every head has K and V
    assert info(head_count_kv=3, key_length=128, value_length=96).kv_bytes_per_token == (
        30 * 3 * (128 + 96) * 2
    )
    assert read_gguf(small_model(tmp_path / "tiny.gguf")).kv_bytes_per_token is None

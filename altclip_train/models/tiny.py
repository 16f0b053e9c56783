"""Offline stand-ins for hub checkpoints: tiny CLIP and XLM-R models with locally trained tokenizers.

Each builder writes a directory that plain `from_pretrained` loads exactly like a hub id
(`openai/clip-vit-large-patch14`, `FacebookAI/xlm-roberta-large`), so tests and the bundled demo run the
real code paths without network access. Tokenizers are trained in about a second (CLIP's BPE with
`tokenizers`, XLM-R's Unigram with `sentencepiece`), using the same normalisation and pre-tokenisation
that the transformers tokenizer classes use at load time, so what is trained here is what gets loaded.
The XLM-R stand-in spells characters it has no piece for in bytes, so no script comes out as `<unk>`.
`pretrain_tiny_clip` gives a tiny CLIP a few seconds of contrastive training (the bundled tiny teacher).
"""

from __future__ import annotations

import io
import json
import tempfile
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, trainers
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizerFast,
    PreTrainedTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaModel,
    XLMRobertaTokenizerFast,
)

from altclip_train.data.images import clip_preprocessor

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
CLIP_WORD_END = "</w>"
XLMR_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3, as in XLM-R
XLMR_SPM_FILE = "sentencepiece.bpe.model"
XLMR_BYTE_PIECES = 256  # <0x00>..<0xFF>, right after <unk> when byte fallback is on

# Parallel captions (row i of every language says the same thing), so they double as a tiny
# parallel corpus for distillation demos. Languages are the AltCLIP-m9 set.
SAMPLE_CAPTIONS: dict[str, tuple[str, ...]] = {
    "en": (
        "A dog runs on the beach.",
        "A red car is parked on the street.",
        "Two children are playing football in the park.",
        "A cat sleeps on the sofa.",
        "A bowl of fruit on a wooden table.",
        "A man rides a bicycle in the city.",
        "Snow covers the mountains under a blue sky.",
        "A woman is reading a book in the library.",
    ),
    "zh": (
        "一只狗在海滩上奔跑。",
        "一辆红色的汽车停在街上。",
        "两个孩子在公园里踢足球。",
        "一只猫在沙发上睡觉。",
        "木桌上有一碗水果。",
        "一个男人在城市里骑自行车。",
        "蓝天下，白雪覆盖着群山。",
        "一个女人在图书馆里看书。",
    ),
    "es": (
        "Un perro corre por la playa.",
        "Un coche rojo está aparcado en la calle.",
        "Dos niños juegan al fútbol en el parque.",
        "Un gato duerme en el sofá.",
        "Un cuenco de fruta sobre una mesa de madera.",
        "Un hombre monta en bicicleta por la ciudad.",
        "La nieve cubre las montañas bajo un cielo azul.",
        "Una mujer lee un libro en la biblioteca.",
    ),
    "fr": (
        "Un chien court sur la plage.",
        "Une voiture rouge est garée dans la rue.",
        "Deux enfants jouent au football dans le parc.",
        "Un chat dort sur le canapé.",
        "Un bol de fruits sur une table en bois.",
        "Un homme fait du vélo en ville.",
        "La neige recouvre les montagnes sous un ciel bleu.",
        "Une femme lit un livre à la bibliothèque.",
    ),
    "ru": (
        "Собака бежит по пляжу.",
        "Красная машина припаркована на улице.",
        "Двое детей играют в футбол в парке.",
        "Кошка спит на диване.",
        "Миска с фруктами на деревянном столе.",
        "Мужчина едет на велосипеде по городу.",
        "Снег покрывает горы под голубым небом.",
        "Женщина читает книгу в библиотеке.",
    ),
    "ja": (
        "犬が浜辺を走っている。",
        "赤い車が通りに停まっている。",
        "二人の子供が公園でサッカーをしている。",
        "猫がソファの上で寝ている。",
        "木のテーブルの上に果物の入ったボウルがある。",
        "男性が街で自転車に乗っている。",
        "青空の下、雪が山々を覆っている。",
        "女性が図書館で本を読んでいる。",
    ),
    "ko": (
        "개가 해변에서 달리고 있다.",
        "빨간 자동차가 거리에 주차되어 있다.",
        "두 아이가 공원에서 축구를 하고 있다.",
        "고양이가 소파 위에서 자고 있다.",
        "나무 탁자 위에 과일 한 그릇이 있다.",
        "한 남자가 도시에서 자전거를 타고 있다.",
        "파란 하늘 아래 눈이 산을 덮고 있다.",
        "한 여자가 도서관에서 책을 읽고 있다.",
    ),
    "ar": (
        "كلب يركض على الشاطئ.",
        "سيارة حمراء متوقفة في الشارع.",
        "طفلان يلعبان كرة القدم في الحديقة.",
        "قطة تنام على الأريكة.",
        "وعاء من الفاكهة على طاولة خشبية.",
        "رجل يركب دراجة في المدينة.",
        "الثلج يغطي الجبال تحت سماء زرقاء.",
        "امرأة تقرأ كتابا في المكتبة.",
    ),
    "it": (
        "Un cane corre sulla spiaggia.",
        "Un'auto rossa è parcheggiata in strada.",
        "Due bambini giocano a calcio nel parco.",
        "Un gatto dorme sul divano.",
        "Una ciotola di frutta su un tavolo di legno.",
        "Un uomo va in bicicletta in città.",
        "La neve copre le montagne sotto un cielo azzurro.",
        "Una donna legge un libro in biblioteca.",
    ),
}
SAMPLE_SENTENCES: tuple[str, ...] = tuple(text for captions in SAMPLE_CAPTIONS.values() for text in captions)


def _clean_texts(texts: Iterable[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("tokenizer texts must be an iterable of strings, not a single string")
    cleaned = [text for text in texts if isinstance(text, str) and text.strip()]
    if not cleaned:
        raise ValueError("cannot train a tokenizer: no non-empty texts given")
    return cleaned


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes 0..255, in byte order (GPT-2/CLIP layout)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    stand_in = {byte: byte for byte in printable}
    next_free = 256
    for byte in range(256):
        if byte not in stand_in:
            stand_in[byte] = next_free
            next_free += 1
    return [chr(stand_in[byte]) for byte in range(256)]


def train_clip_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 1000,
                         model_max_length: int = 77) -> CLIPTokenizerFast:
    """Train a CLIP-style byte-level BPE tokenizer on `texts` and save it to `out_dir`.

    The vocabulary is laid out like OpenAI CLIP's: 256 byte tokens, the same with `</w>`, the learned
    merges, then `<|startoftext|>` and `<|endoftext|>` as the two highest ids. Every byte and every
    word-final byte is present, so no text ever maps to the unknown token (which CLIP aliases to eos).
    The vocabulary has `vocab_size` entries, or fewer when the texts support fewer merges.
    """
    texts = _clean_texts(texts)
    alphabet = _byte_alphabet()
    base_tokens = alphabet + [char + CLIP_WORD_END for char in alphabet]
    if vocab_size < len(base_tokens) + 2:
        raise ValueError(f"vocab_size={vocab_size} is too small for a byte-level CLIP tokenizer (need >= {len(base_tokens) + 2})")

    # Borrow normalisation and pre-tokenisation from the transformers class: it rebuilds exactly
    # these from vocab + merges when the directory is loaded, so training must see the same splits.
    reference = CLIPTokenizerFast().backend_tokenizer
    trainee = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix=CLIP_WORD_END))
    trainee.normalizer = reference.normalizer
    trainee.pre_tokenizer = reference.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        initial_alphabet=alphabet,
        # Listing the word-final forms up front fixes their ids; otherwise the trainer numbers them
        # in hash-map order, which breaks ties between equally frequent merges differently per run.
        special_tokens=base_tokens[len(alphabet):],
        end_of_word_suffix=CLIP_WORD_END,
        show_progress=False,
    )
    trainee.train_from_iterator(texts, trainer=trainer)

    learned = json.loads(trainee.to_str())["model"]["merges"]
    vocab = {token: index for index, token in enumerate(base_tokens)}
    merges: list[tuple[str, str]] = []
    token_limit = vocab_size - 2
    for left, right in (merge.split(" ") if isinstance(merge, str) else merge for merge in learned):
        merged = left + right
        # Two merges can spell the same token ("ab"+"c", "a"+"bc"); only new tokens use up the budget.
        if merged not in vocab:
            if len(vocab) == token_limit:
                break
            vocab[merged] = len(vocab)
        merges.append((left, right))
    vocab[CLIP_BOS] = len(vocab)
    vocab[CLIP_EOS] = len(vocab)

    tokenizer = CLIPTokenizerFast(vocab=vocab, merges=merges, model_max_length=model_max_length)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def train_xlmr_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 2000,
                         model_max_length: int = 64, byte_fallback: bool = True) -> PreTrainedTokenizerFast:
    """Train a SentencePiece-Unigram model on `texts`, wrap it as XLM-R's tokenizer and save it to `out_dir`.

    Laid out like `FacebookAI/xlm-roberta-*`: `sentencepiece.bpe.model` (NFKC normalisation) plus
    `tokenizer.json`, ids `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, pieces, `<mask>` last, encodings
    `<s> ... </s>`. The vocabulary has at most `vocab_size` entries (fewer when the texts are small).

    With `byte_fallback` (the default) the 256 byte pieces `<0x00>`..`<0xFF>` follow `<unk>`, and any
    character the pieces do not cover is spelled in UTF-8 bytes, so text in a script the training texts
    never saw (Hindi, Thai, emoji) still tokenises without `<unk>` and decodes back to itself. When the
    texts hold more distinct characters than the vocabulary can list, the rarest ones go to bytes.
    Real XLM-R covers every script with its 250k pieces; a stand-in trained on a few sentences needs
    bytes to do the same. Without `byte_fallback`, characters absent from the texts become `<unk>`.
    """
    import sentencepiece

    texts = _clean_texts(texts)
    reserved = len(XLMR_SPECIALS) + 1 + (XLMR_BYTE_PIECES if byte_fallback else 0)  # + <mask>
    minimum = reserved + 16
    if vocab_size < minimum:
        raise ValueError(f"vocab_size={vocab_size} is too small for an XLM-R tokenizer"
                         f"{' with byte fallback' if byte_fallback else ''} (need >= {minimum})")
    # Characters must fit next to the specials and bytes, with a quarter of the room left for pieces.
    if byte_fallback:
        texts = _frequent_characters_only(texts, (vocab_size - reserved) * 3 // 4)
    model_bytes = io.BytesIO()
    # sentencepiece rather than the `tokenizers` Unigram trainer: the latter is not reproducible
    # run to run, and a builder called twice with one seed must give the same checkpoint.
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model_bytes,
        model_type="unigram",
        vocab_size=vocab_size - 2,  # XLM-R adds <pad> and <mask> to the model's <unk> <s> </s>
        hard_vocab_limit=False,
        character_coverage=1.0,
        byte_fallback=byte_fallback,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Convert in a scratch dir: loading from out_dir could pick up a stale tokenizer.json.
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        # The converter warns that it drops byte fallback; `_with_byte_fallback` puts it back.
        warnings.filterwarnings("ignore", message=".*byte fallback option.*")
        (Path(scratch) / XLMR_SPM_FILE).write_bytes(model_bytes.getvalue())
        tokenizer = XLMRobertaTokenizerFast.from_pretrained(scratch, model_max_length=model_max_length)
    if tokenizer.convert_ids_to_tokens(list(range(len(XLMR_SPECIALS)))) != list(XLMR_SPECIALS):
        raise RuntimeError(f"converted tokenizer does not start with {XLMR_SPECIALS}")
    if byte_fallback:
        tokenizer = _with_byte_fallback(tokenizer, model_max_length)
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / XLMR_SPM_FILE).write_bytes(model_bytes.getvalue())
    return tokenizer


def _frequent_characters_only(texts: list[str], char_budget: int) -> list[str]:
    """`texts` (NFKC) with every character outside the `char_budget` most frequent ones removed.

    sentencepiece lists every character it trains on (its `character_coverage` cannot go below 0.98),
    so characters that would not fit are left out of training instead; byte fallback spells them.
    """
    texts = [unicodedata.normalize("NFKC", text) for text in texts]
    counts = Counter(char for text in texts for char in text if not char.isspace())
    if len(counts) <= char_budget:
        return texts
    keep = {char for char, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:char_budget]}
    kept = ["".join(char for char in text if char in keep or char.isspace()) for text in texts]
    return [text for text in kept if text.strip()]


def _with_byte_fallback(tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    """The same pieces, normaliser and pre-tokeniser, with byte fallback in the model and the decoder.

    transformers' `XLMRobertaTokenizer` rebuilds its Unigram model without byte fallback whenever it
    loads, so the result is saved as a plain tokenizers-backed tokenizer (`AutoTokenizer` loads its
    tokenizer.json as written); ids, specials and encodings stay XLM-R's.
    """
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    vocab = [tuple(entry) for entry in json.loads(backend.to_str())["model"]["vocab"]]
    unk_id = len(XLMR_SPECIALS) - 1
    backend.model = models.Unigram(vocab, unk_id=unk_id, byte_fallback=True)
    backend.decoder = decoders.Sequence([
        decoders.ByteFallback(),
        decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True),
    ])
    specials = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                    cls_token="<s>", sep_token="</s>")
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=model_max_length, **specials)


def tiny_clip_config(
    vocab_size: int,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate: int | None = None,
    vision_hidden: int | None = None,
    vision_layers: int | None = None,
    image_size: int = 32,
    patch: int = 8,
    projection_dim: int = 64,
    max_position: int = 77,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> CLIPConfig:
    """A small `CLIPConfig`. Special-token ids default to the layout `train_clip_tokenizer` produces
    (bos, eos as the two highest ids; pad = eos), which makes the text tower pool at the end-of-text token."""
    bos_token_id = vocab_size - 2 if bos_token_id is None else bos_token_id
    eos_token_id = vocab_size - 1 if eos_token_id is None else eos_token_id
    pad_token_id = eos_token_id if pad_token_id is None else pad_token_id
    if eos_token_id == 2:
        # transformers treats eos id 2 as a legacy config and pools at argmax(input_ids) instead.
        raise ValueError("eos_token_id=2 would make CLIPTextModel pool at argmax(input_ids); lay the vocabulary out differently")
    vision_hidden = hidden if vision_hidden is None else vision_hidden
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_position,
        projection_dim=projection_dim,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    vision_config = dict(
        hidden_size=vision_hidden,
        intermediate_size=4 * vision_hidden,
        num_hidden_layers=layers if vision_layers is None else vision_layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch,
        projection_dim=projection_dim,
    )
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim)


def tiny_xlmr_config(
    vocab_size: int,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate: int = 128,
    max_length: int = 64,
) -> XLMRobertaConfig:
    """A small `XLMRobertaConfig` whose position table fits `max_length` tokens.

    RoBERTa position ids start at padding_idx + 1 = 2, so the table needs max_length + 2 rows.
    """
    return XLMRobertaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_length + 2,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )


def _seeded_init(model_class, config, seed: int):
    # fork_rng keeps the caller's RNG stream untouched by building a model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class(config).eval()


def build_tiny_clip(out_dir: str | Path, tokenizer_texts: Iterable[str] = SAMPLE_SENTENCES, seed: int = 0,
                    vocab_size: int = 1000, **config_overrides) -> Path:
    """Write a random-init tiny CLIP checkpoint (model, tokenizer, image processor) to `out_dir`.

    `config_overrides` go to `tiny_clip_config`. The directory loads with `CLIPModel`, `CLIPTextModel`,
    `CLIPVisionModel` and `CLIPProcessor` `.from_pretrained`.
    """
    out_dir = Path(out_dir)
    max_position = config_overrides.get("max_position", 77)
    tokenizer = train_clip_tokenizer(tokenizer_texts, out_dir, vocab_size=vocab_size, model_max_length=max_position)
    config = tiny_clip_config(
        len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config_overrides,
    )
    save_model_dir(_seeded_init(CLIPModel, config, seed), out_dir)

    image_size = config.vision_config.image_size
    image_processor = clip_preprocessor(image_size).processor
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(out_dir))
    return out_dir


def build_tiny_xlmr(out_dir: str | Path, tokenizer_texts: Iterable[str] = SAMPLE_SENTENCES, seed: int = 0,
                    vocab_size: int = 2000, **config_overrides) -> Path:
    """Write a random-init tiny XLM-R checkpoint (the stand-in for `FacebookAI/xlm-roberta-large`) to `out_dir`.

    `config_overrides` go to `tiny_xlmr_config`; the tokenizer's model_max_length follows `max_length`.
    """
    out_dir = Path(out_dir)
    max_length = config_overrides.get("max_length", 64)
    tokenizer = train_xlmr_tokenizer(tokenizer_texts, out_dir, vocab_size=vocab_size, model_max_length=max_length)
    config = tiny_xlmr_config(len(tokenizer), **config_overrides)
    save_model_dir(_seeded_init(XLMRobertaModel, config, seed), out_dir)
    return out_dir


def save_model_dir(model, out_dir: str | Path) -> Path:
    """What `model.save_pretrained(out_dir)` writes (config.json, model.safetensors), on any process.

    transformers' `save_pretrained` silently writes no config and no weights on a rank other than 0
    once torch.distributed is initialised. A build-once step runs on whichever rank takes the lock
    first, so it must not depend on being rank 0.
    """
    from safetensors.torch import save_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.architectures = [type(model).__name__]
    model.config.dtype = str(model.dtype).removeprefix("torch.")
    model.config.save_pretrained(str(out_dir))
    save_model(model, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return out_dir


def pretrain_tiny_clip(model_dir: str | Path, pairs: Sequence[tuple[str | Path, str]], steps: int = 300,
                       batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 0.1, warmup_steps: int = 30,
                       grad_clip: float = 5.0, seed: int = 0) -> tuple[float, float]:
    """Train the CLIP checkpoint in `model_dir` contrastively on (image file, caption) pairs, in place.

    The demo's step-0 teacher recipe (both towers trained from scratch, AdamW, warmup, clipped
    gradients), shortened to `steps` steps of `batch_size` distinct images with one of their captions
    each. It gives the tiny teacher what a real one has: text vectors that follow what a caption says
    and image features that match them, so phase 1 distils meaning rather than random features and
    phase 2 starts from aligned towers. Self-contained (no Accelerate, no collectives), so it runs the
    same on any rank. Returns the mean loss of the first and the last tenth of the steps.
    """
    from altclip_train.data.images import clip_preprocessor, load_image_file

    model_dir = Path(model_dir)
    model = CLIPModel.from_pretrained(str(model_dir))
    tokenizer = CLIPTokenizerFast.from_pretrained(str(model_dir))
    size = model.config.vision_config.image_size
    transform = clip_preprocessor(size)
    image_index: dict[str, int] = {}
    captions: list[list[str]] = []
    for image, caption in pairs:
        key = str(image)
        if key not in image_index:
            image_index[key] = len(captions)
            captions.append([])
        captions[image_index[key]].append(caption)
    if len(captions) < 2:
        raise ValueError("pretraining a tiny CLIP needs pairs of at least two distinct images")
    pixels = torch.stack([transform(load_image_file(path)) for path in image_index])
    batch_size = min(batch_size, len(captions))

    threads = torch.get_num_threads()
    # A model this small runs fastest on one thread; more only contend with the caller's.
    torch.set_num_threads(1)
    losses: list[float] = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, eps=1e-8)
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup_steps)))
            model.train()
            for _ in range(steps):
                images = torch.randperm(len(captions), generator=generator)[:batch_size].tolist()
                texts = [captions[i][int(torch.randint(len(captions[i]), (1,), generator=generator))] for i in images]
                tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
                loss = model(**tokens, pixel_values=pixels[images], return_loss=True).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    save_model_dir(model.eval(), model_dir)
    tenth = max(1, steps // 10)
    return sum(losses[:tenth]) / tenth, sum(losses[-tenth:]) / tenth


def train_siglip_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 600,
                           model_max_length: int = 64):
    """Train a SentencePiece model on `texts` and save it as SigLIP's tokenizer (`SiglipTokenizer`, `spiece.model`):
    lower-cased, punctuation kept out by the tokenizer's own canonicalisation, `</s>` as end and pad token."""
    import sentencepiece
    from transformers import SiglipTokenizer

    texts = [text.lower() for text in _clean_texts(texts)]
    model_bytes = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model_bytes, model_type="unigram", vocab_size=vocab_size,
        hard_vocab_limit=False, character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        num_threads=1, minloglevel=2)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "spiece.model").write_bytes(model_bytes.getvalue())
    tokenizer = SiglipTokenizer(vocab_file=str(out_dir / "spiece.model"), model_max_length=model_max_length)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def build_tiny_siglip(out_dir: str | Path, tokenizer_texts: Iterable[str] = SAMPLE_SENTENCES, seed: int = 0,
                      naflex: bool = False, hidden: int = 64, projection_size: int = 48, vision_hidden: int = 48,
                      image_size: int = 32, patch: int = 8, max_position: int = 64) -> Path:
    """Write a random-init tiny SigLIP checkpoint (`SiglipModel`, or `Siglip2Model` with `naflex`) with its
    tokenizer and image processor. The text `head` maps `hidden` to a different `projection_size`, so a
    target read before the head cannot pass for one read after it; scale and bias start where SigLIP's do."""
    import math

    from transformers import Siglip2Config, Siglip2Model, SiglipConfig, SiglipImageProcessorPil, SiglipModel

    out_dir = Path(out_dir)
    tokenizer = train_siglip_tokenizer(tokenizer_texts, out_dir, model_max_length=max_position)
    text_config = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=max_position,
                       projection_size=projection_size, pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    vision_config = dict(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_hidden_layers=2,
                         num_attention_heads=4, patch_size=patch)
    if naflex:
        config = Siglip2Config(text_config=text_config, vision_config={**vision_config,
                                                                       "num_patches": (image_size // patch) ** 2})
        model_class = Siglip2Model
    else:
        config = SiglipConfig(text_config=text_config, vision_config={**vision_config, "image_size": image_size})
        model_class = SiglipModel
    model = _seeded_init(model_class, config, seed)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    save_model_dir(model, out_dir)
    if not naflex:
        SiglipImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(str(out_dir))
    return out_dir


def build_tiny_open_clip(out_dir: str | Path, seed: int = 0, sigmoid: bool = False, embed_dim: int = 24,
                         text_width: int = 40) -> Path:
    """A tiny random open_clip CLIP (OpenAI layout, quick GELU, open_clip's own BPE tokenizer) saved as open_clip
    saves it: `open_clip_config.json` + `open_clip_model.safetensors`. Needs the open_clip extra.

    Embedding (24) and text width (40) differ, so the two distillation targets cannot pass for each other;
    `sigmoid=True` gives it a logit bias, as open_clip's SigLIP configs have."""
    import open_clip
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_cfg = {"embed_dim": embed_dim, "quick_gelu": True,
                 "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8,
                                "mlp_ratio": 2.0},
                 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": text_width, "heads": 2,
                              "layers": 2}}
    if sigmoid:
        model_cfg["init_logit_bias"] = -10.0
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    with torch.no_grad():  # open_clip zero-initialises some tensors; random ones make every weight matter
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / "open_clip_model.safetensors"))
    preprocess = {"mean": [0.48, 0.45, 0.40], "std": [0.26, 0.26, 0.27], "interpolation": "bicubic",
                  "resize_mode": "shortest"}
    (out_dir / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2) + "\n", encoding="utf-8")
    return out_dir

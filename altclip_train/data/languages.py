"""Language codes the project needs in one place: XLM-R's pre-training languages, and how NLLB's codes
(`hin_Deva`) map to the ISO 639-1 codes (`hi`) that `data.languages` and every metric name use.

`XLMR_LANGUAGES` is the 100-language list of the XLM-R paper (Conneau et al., 2020, appendix): 93 ISO
639-1 codes, plus seven entries that share a code with one of them (five romanised scripts, Burmese in
the Zawgyi encoding and Traditional Chinese) and are listed in `XLMR_VARIANTS`. A language outside these
never reached XLM-R's vocabulary or its encoder during pre-training.
"""

from __future__ import annotations

# ISO 639-1 -> (English name, NLLB-200 code or None where NLLB has no such language)
XLMR_LANGUAGES: dict[str, tuple[str, str | None]] = {
    "af": ("Afrikaans", "afr_Latn"), "am": ("Amharic", "amh_Ethi"), "ar": ("Arabic", "arb_Arab"),
    "as": ("Assamese", "asm_Beng"), "az": ("Azerbaijani", "azj_Latn"), "be": ("Belarusian", "bel_Cyrl"),
    "bg": ("Bulgarian", "bul_Cyrl"), "bn": ("Bengali", "ben_Beng"), "br": ("Breton", None),
    "bs": ("Bosnian", "bos_Latn"), "ca": ("Catalan", "cat_Latn"), "cs": ("Czech", "ces_Latn"),
    "cy": ("Welsh", "cym_Latn"), "da": ("Danish", "dan_Latn"), "de": ("German", "deu_Latn"),
    "el": ("Greek", "ell_Grek"), "en": ("English", "eng_Latn"), "eo": ("Esperanto", "epo_Latn"),
    "es": ("Spanish", "spa_Latn"), "et": ("Estonian", "est_Latn"), "eu": ("Basque", "eus_Latn"),
    "fa": ("Persian", "pes_Arab"), "fi": ("Finnish", "fin_Latn"), "fr": ("French", "fra_Latn"),
    "fy": ("Western Frisian", None), "ga": ("Irish", "gle_Latn"), "gd": ("Scottish Gaelic", "gla_Latn"),
    "gl": ("Galician", "glg_Latn"), "gu": ("Gujarati", "guj_Gujr"), "ha": ("Hausa", "hau_Latn"),
    "he": ("Hebrew", "heb_Hebr"), "hi": ("Hindi", "hin_Deva"), "hr": ("Croatian", "hrv_Latn"),
    "hu": ("Hungarian", "hun_Latn"), "hy": ("Armenian", "hye_Armn"), "id": ("Indonesian", "ind_Latn"),
    "is": ("Icelandic", "isl_Latn"), "it": ("Italian", "ita_Latn"), "ja": ("Japanese", "jpn_Jpan"),
    "jv": ("Javanese", "jav_Latn"), "ka": ("Georgian", "kat_Geor"), "kk": ("Kazakh", "kaz_Cyrl"),
    "km": ("Khmer", "khm_Khmr"), "kn": ("Kannada", "kan_Knda"), "ko": ("Korean", "kor_Hang"),
    "ku": ("Kurdish (Kurmanji)", "kmr_Latn"), "ky": ("Kyrgyz", "kir_Cyrl"), "la": ("Latin", None),
    "lo": ("Lao", "lao_Laoo"), "lt": ("Lithuanian", "lit_Latn"), "lv": ("Latvian", "lvs_Latn"),
    "mg": ("Malagasy", "plt_Latn"), "mk": ("Macedonian", "mkd_Cyrl"), "ml": ("Malayalam", "mal_Mlym"),
    "mn": ("Mongolian", "khk_Cyrl"), "mr": ("Marathi", "mar_Deva"), "ms": ("Malay", "zsm_Latn"),
    "my": ("Burmese", "mya_Mymr"), "ne": ("Nepali", "npi_Deva"), "nl": ("Dutch", "nld_Latn"),
    "no": ("Norwegian", "nob_Latn"), "om": ("Oromo", "gaz_Latn"), "or": ("Oriya", "ory_Orya"),
    "pa": ("Punjabi", "pan_Guru"), "pl": ("Polish", "pol_Latn"), "ps": ("Pashto", "pbt_Arab"),
    "pt": ("Portuguese", "por_Latn"), "ro": ("Romanian", "ron_Latn"), "ru": ("Russian", "rus_Cyrl"),
    "sa": ("Sanskrit", "san_Deva"), "sd": ("Sindhi", "snd_Arab"), "si": ("Sinhala", "sin_Sinh"),
    "sk": ("Slovak", "slk_Latn"), "sl": ("Slovenian", "slv_Latn"), "so": ("Somali", "som_Latn"),
    "sq": ("Albanian", "als_Latn"), "sr": ("Serbian", "srp_Cyrl"), "su": ("Sundanese", "sun_Latn"),
    "sv": ("Swedish", "swe_Latn"), "sw": ("Swahili", "swh_Latn"), "ta": ("Tamil", "tam_Taml"),
    "te": ("Telugu", "tel_Telu"), "th": ("Thai", "tha_Thai"), "tl": ("Filipino", "tgl_Latn"),
    "tr": ("Turkish", "tur_Latn"), "ug": ("Uyghur", "uig_Arab"), "uk": ("Ukrainian", "ukr_Cyrl"),
    "ur": ("Urdu", "urd_Arab"), "uz": ("Uzbek", "uzn_Latn"), "vi": ("Vietnamese", "vie_Latn"),
    "xh": ("Xhosa", "xho_Latn"), "yi": ("Yiddish", "ydd_Hebr"), "zh": ("Chinese (Simplified)", "zho_Hans"),
}
XLMR_VARIANTS: dict[str, str] = {
    "bn-Latn": "Bengali (romanised)", "hi-Latn": "Hindi (romanised)", "ta-Latn": "Tamil (romanised)",
    "te-Latn": "Telugu (romanised)", "ur-Latn": "Urdu (romanised)", "my-x-zawgyi": "Burmese (Zawgyi)",
    "zh-Hant": "Chinese (Traditional)",
}

# NLLB codes of the other XLM-R entries and of languages outside XLM-R that have an ISO 639-1 code, so
# `--to yor_Latn` lands in `yo/`.
_OTHER_NLLB_ISO = {
    "yor_Latn": "yo", "ibo_Latn": "ig", "zul_Latn": "zu", "wol_Latn": "wo", "lin_Latn": "ln", "lug_Latn": "lg",
    "kin_Latn": "rw", "sna_Latn": "sn", "nya_Latn": "ny", "tsn_Latn": "tn", "sot_Latn": "st", "ssw_Latn": "ss",
    "tso_Latn": "ts", "tir_Ethi": "ti", "hat_Latn": "ht", "mri_Latn": "mi", "smo_Latn": "sm", "fij_Latn": "fj",
    "tat_Cyrl": "tt", "tgk_Cyrl": "tg", "tuk_Latn": "tk", "bak_Cyrl": "ba", "bod_Tibt": "bo", "dzo_Tibt": "dz",
    "ltz_Latn": "lb", "mlt_Latn": "mt", "fao_Latn": "fo", "oci_Latn": "oc", "srd_Latn": "sc", "lim_Latn": "li",
    "aka_Latn": "ak", "ewe_Latn": "ee", "kik_Latn": "ki", "kon_Latn": "kg", "run_Latn": "rn", "sag_Latn": "sg",
    "twi_Latn": "tw", "bam_Latn": "bm", "grn_Latn": "gn", "quy_Latn": "qu", "nno_Latn": "nn", "ayr_Latn": "ay",
    "kas_Arab": "ks", "zho_Hant": "zh-Hant",
}
NLLB_TO_ISO: dict[str, str] = {nllb: iso for iso, (_, nllb) in XLMR_LANGUAGES.items() if nllb} | _OTHER_NLLB_ISO


def iso_code(code: str) -> str:
    """The ISO 639-1 name of a model's language code (`hin_Deva` -> `hi`, `hi` -> `hi`); unknown codes as given."""
    return NLLB_TO_ISO.get(code, code)


def nllb_code(code: str) -> str | None:
    """NLLB's code for an ISO 639-1 code of XLM-R's list (`hi` -> `hin_Deva`), else None."""
    entry = XLMR_LANGUAGES.get(code)
    return entry[1] if entry else None


def in_xlmr(code: str) -> bool:
    """Was this language (ISO 639-1, an XLM-R variant, or an NLLB code) among XLM-R's pre-training languages?"""
    code = iso_code(code)
    return code in XLMR_LANGUAGES or code in XLMR_VARIANTS


def language_name(code: str) -> str:
    code = iso_code(code)
    if code in XLMR_LANGUAGES:
        return XLMR_LANGUAGES[code][0]
    return XLMR_VARIANTS.get(code, code)

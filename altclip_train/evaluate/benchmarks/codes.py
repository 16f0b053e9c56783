"""The language codes each benchmark's files use, as CLIP_benchmark names them, and the one check every reader makes.

CLIP_benchmark (1.6.2) reads a language's files by the code given to `--language` and writes that code into its
results JSON. Our readers report ISO 639-1 codes where a benchmark's own code is a different spelling of one, and
write CLIP_benchmark's code back into its results JSON (`native_codes`), so `clip_benchmark build` puts both
tools' numbers in the same rows:

| benchmark        | file code (CLIP_benchmark, results JSON) | our report | where CLIP_benchmark lists it                  |
|------------------|------------------------------------------|------------|------------------------------------------------|
| xtd10            | `jp`                                     | `ja`       | `datasets/xtd10.py` (as `multilingual_mscoco`) |
| imagenet1k       | `jp`, `cn`                               | `ja`, `zh` | `datasets/<code>_classnames.json`              |
| xm3600           | its 36 codes (`fil`, `mi`, `quz`, ...)   | the same   | `datasets/crossmodal3600.py`                   |
| flickr30k_200, xtd200 | FLORES-200 (`eng_Latn`, `zho_Hans`) | the same   | `datasets/flores_langs.py`                     |
| babel_imagenet   | upper-case ISO 639-1 keys (`DE`)         | `de`       | `datasets/babel_imagenet.json` (it upper-cases `--language`) |

A file whose code is none of the benchmark's is refused in one line naming the file: CLIP_benchmark would never
read it, and reporting it as a language would put a number under a name no other table has.
"""

from __future__ import annotations

from pathlib import Path

# CLIP_benchmark's file codes that spell an ISO 639-1 code differently: file code -> ISO 639-1.
CLIP_BENCHMARK_ISO = {"jp": "ja", "cn": "zh"}

# CLIP_benchmark's datasets/xtd10.py SUPPORTED_LANGUAGES (Japanese is `jp`, STAIR's file name).
XTD10_CODES = ("de", "en", "es", "fr", "it", "jp", "ko", "pl", "ru", "tr", "zh")

# CLIP_benchmark's datasets/crossmodal3600.py SUPPORTED_LANGUAGES: the 36 keys of Crossmodal-3600's captions.jsonl.
XM3600_CODES = (
    "ar", "bn", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fil", "fr", "he", "hi", "hr", "hu", "id", "it", "ja",
    "ko", "mi", "nl", "no", "pl", "pt", "quz", "ro", "ru", "sv", "sw", "te", "th", "tr", "uk", "vi", "zh",
)

# CLIP_benchmark's datasets/flores_langs.py: the FLORES-200 codes it reads `<code>.txt` for (201, in its order).
FLORES200_CODES = (
    "ace_Arab", "ace_Latn", "acm_Arab", "acq_Arab", "aeb_Arab", "afr_Latn", "ajp_Arab", "aka_Latn", "amh_Ethi",
    "apc_Arab", "arb_Arab", "ars_Arab", "ary_Arab", "arz_Arab", "asm_Beng", "ast_Latn", "awa_Deva", "ayr_Latn",
    "azb_Arab", "azj_Latn", "bak_Cyrl", "bam_Latn", "ban_Latn", "bel_Cyrl", "bem_Latn", "ben_Beng", "bho_Deva",
    "bjn_Arab", "bjn_Latn", "bod_Tibt", "bos_Latn", "bug_Latn", "bul_Cyrl", "cat_Latn", "ceb_Latn", "ces_Latn",
    "cjk_Latn", "ckb_Arab", "crh_Latn", "cym_Latn", "dan_Latn", "deu_Latn", "dik_Latn", "dyu_Latn", "dzo_Tibt",
    "eng_Latn", "ell_Grek", "epo_Latn", "est_Latn", "eus_Latn", "ewe_Latn", "fao_Latn", "fij_Latn", "fin_Latn",
    "fon_Latn", "fra_Latn", "fur_Latn", "fuv_Latn", "gla_Latn", "gle_Latn", "glg_Latn", "grn_Latn", "guj_Gujr",
    "hat_Latn", "hau_Latn", "heb_Hebr", "hin_Deva", "hne_Deva", "hrv_Latn", "hun_Latn", "hye_Armn", "ibo_Latn",
    "ilo_Latn", "ind_Latn", "isl_Latn", "ita_Latn", "jav_Latn", "jpn_Jpan", "kab_Latn", "kac_Latn", "kam_Latn",
    "kan_Knda", "kas_Arab", "kas_Deva", "kat_Geor", "knc_Arab", "knc_Latn", "kaz_Cyrl", "kbp_Latn", "kea_Latn",
    "khm_Khmr", "kik_Latn", "kin_Latn", "kir_Cyrl", "kmb_Latn", "kmr_Latn", "kon_Latn", "kor_Hang", "lao_Laoo",
    "lij_Latn", "lim_Latn", "lin_Latn", "lit_Latn", "lmo_Latn", "ltg_Latn", "ltz_Latn", "lua_Latn", "lug_Latn",
    "luo_Latn", "lus_Latn", "lvs_Latn", "mag_Deva", "mai_Deva", "mal_Mlym", "mar_Deva", "min_Latn", "mkd_Cyrl",
    "plt_Latn", "mlt_Latn", "mni_Beng", "khk_Cyrl", "mos_Latn", "mri_Latn", "mya_Mymr", "nld_Latn", "nno_Latn",
    "nob_Latn", "npi_Deva", "nso_Latn", "nus_Latn", "nya_Latn", "oci_Latn", "gaz_Latn", "ory_Orya", "pag_Latn",
    "pan_Guru", "pap_Latn", "pes_Arab", "pol_Latn", "por_Latn", "prs_Arab", "pbt_Arab", "quy_Latn", "ron_Latn",
    "run_Latn", "rus_Cyrl", "sag_Latn", "san_Deva", "scn_Latn", "shn_Mymr", "sin_Sinh", "slk_Latn", "slv_Latn",
    "smo_Latn", "sna_Latn", "snd_Arab", "som_Latn", "sot_Latn", "spa_Latn", "als_Latn", "srd_Latn", "srp_Cyrl",
    "ssw_Latn", "sun_Latn", "swe_Latn", "swh_Latn", "szl_Latn", "tam_Taml", "tat_Cyrl", "tel_Telu", "tgk_Cyrl",
    "tgl_Latn", "tha_Thai", "tir_Ethi", "taq_Latn", "taq_Tfng", "tpi_Latn", "tsn_Latn", "tso_Latn", "tuk_Latn",
    "tum_Latn", "tur_Latn", "twi_Latn", "tzm_Tfng", "uig_Arab", "ukr_Cyrl", "umb_Latn", "urd_Arab", "uzn_Latn",
    "vec_Latn", "vie_Latn", "war_Latn", "wol_Latn", "xho_Latn", "ydd_Hebr", "yor_Latn", "yue_Hant", "zho_Hans",
    "zho_Hant", "zsm_Latn", "zul_Latn"
)

# ISO 639-1 (two-letter) codes, for benchmarks whose files may name any language (imagenet1k's class-name files).
ISO_639_1 = frozenset("""
    aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz ee
    el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io is
    it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms
    mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk
    sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi
    yo za zh zu
""".split())


def check_code(code: str, known, path: str | Path, benchmark: str, hint: str = "") -> str:
    """`code` (taken from `path`) if it is one of `known`; otherwise one line naming the file."""
    if code in known:
        return code
    raise ValueError(f"benchmark {benchmark}: {path}: {code!r} is not a language code of this benchmark"
                     f"{' (' + hint + ')' if hint else ''}; rename or remove the file")

"""The bundled demo: AltCLIP in miniature on scikit-learn's handwritten digits.

Step 0 pretrains a tiny English-only teacher CLIP on English digit captions; step 1 distils its text
tower into a tiny multilingual XLM-R student on a parallel corpus; step 2 tunes contrastively on
image-caption pairs in nine languages with the image tower frozen; step 3 measures zero-shot accuracy
per language on held-out images with held-out caption templates.

`captions.yaml` (number words and aligned caption templates) and `everyday.tsv` (general sentences,
translated into all nine languages) are the hand-written inputs; `build_data.py` turns them and the
digit scans into every file the four steps read.
"""

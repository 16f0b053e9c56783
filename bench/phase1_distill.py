"""Phase-1 benchmark: one distillation run of one recipe, on the benchmark's tiny teacher, student and corpus.

Recipes (same teacher, student initialisation, tokenizers, corpus, batch of 64 pairs, 1 epoch, fp32 on CPU):

  framework              `altclip_train.train.train` on the composed `altclip-train distill` config, exactly
                         as the CLI runs it: teacher-embedding cache built on first use (into a fresh cache
                         dir, so its cost is inside the wall time), captions tokenised once, batches
                         bucketed by length and padded per batch, no data-loader workers.
  naive                  the same loop with `model.teacher_cache=false data.pad_to_max_length=true
                         data.bucket_by_length=false`: the teacher runs live on every step and every caption
                         is padded to 77 tokens, as the original AltCLIP helpers do.
  sentence-transformers  the `make_multilingual` recipe of sentence-transformers: labels computed by the
                         teacher first (`dataset.map(teacher.encode)`, inference batch 64 as in the example),
                         then `SentenceTransformerTrainer` with `losses.MSELoss` on per-language
                         {english, non_english} datasets. Its own defaults otherwise: tokenisation in the
                         collator, padding per batch without length bucketing, fused AdamW.

How the sentence-transformers models match ours. Teacher: a custom input module around the same
`CLIPTextModel` returning `pooler_output` (the pooled end-of-text state before text_projection, our
distillation target; ST's built-in CLIP module would return the projected vector). Student: the stock
modules `Transformer(student XLM-R, no pooler) -> Pooling("cls") -> LayerNorm -> Dense(128 -> 96,
identity)`, which computes exactly `AltCLIPTextModel` (XLM-R -> pre_LN -> transformation, pooled at
<s>); ST applies LayerNorm + Dense to the pooled vector only, AltCLIP to every token (1.6% of the
student's FLOPs here, in ST's favour). Same XLM-R weights; pre_LN/Dense start at their own random init.

    python bench/phase1_distill.py --recipe framework --json-out bench/results/runs/p1-framework.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the working tree's altclip_train

from harness import RunMeter, library_versions, machine, quiet_libraries, this_command, write_json  # noqa: E402

RECIPES = ("framework", "naive", "sentence-transformers")
STUDENT_PAD_ID = 1  # XLM-R's <pad>


class PaddingCounter:
    """Counts real vs padded tokens entering the student's word embeddings, in any recipe.

    Wraps `nn.Embedding.forward` once; only the student's table (its vocabulary size) is counted.
    """

    def __init__(self, vocab_size: int, pad_id: int):
        import torch.nn as nn

        self.real = self.padded = 0
        counter, original = self, nn.Embedding.forward

        def forward(module, input_ids):
            if module.num_embeddings == vocab_size and module.training:
                counter.padded += input_ids.numel()
                counter.real += int((input_ids != pad_id).sum())
            return original(module, input_ids)

        nn.Embedding.forward = forward

    def efficiency(self) -> float | None:
        return self.real / self.padded if self.padded else None


# ----------------------------------------------------------------------------- framework / naive
def framework_config(root: Path, workdir: Path, args, naive: bool):
    from bench_assets import phase1_corpora
    from altclip_train.cli import compose_config

    overrides = [
        f"model.teacher={root / 'teacher'}", f"model.student={root / 'student'}",
        "logger=jsonl", "name=bench-phase1", f"run_dir={workdir / 'run'}", f"cache_dir={workdir / 'cache'}",
        f"data.batch_size={args.batch_size}", f"data.num_workers={args.num_workers}", "data.val_size=0",
        f"trainer.epochs={args.epochs}", "trainer.eval_at_start=false", "trainer.eval_every=0",
        "trainer.save_every=0", "trainer.log_every=10", "optim.warmup_steps=5", f"seed={args.seed}",
    ]
    if naive:
        overrides += ["model.teacher_cache=false", "data.pad_to_max_length=true", "data.bucket_by_length=false"]
    cfg = compose_config("distill", overrides)
    cfg.data.corpora = phase1_corpora(root)
    return cfg, overrides


def run_framework(root: Path, workdir: Path, args, meter: RunMeter, naive: bool) -> dict:
    from altclip_train.train import train

    cfg, overrides = framework_config(root, workdir, args, naive)
    meter.start()
    train(cfg)
    meter.finish()
    return {"overrides": overrides + ["data.corpora=<the 8 bench corpora>"]}


# ----------------------------------------------------------------------------- sentence-transformers
def clip_teacher_module():
    """A sentence-transformers input module around CLIP's text tower that returns its pooled output."""
    from sentence_transformers.sentence_transformer.modules import InputModule
    from transformers import AutoTokenizer, CLIPTextModel

    class ClipPooledText(InputModule):
        config_keys = ["max_seq_length"]

        def __init__(self, path: str, max_seq_length: int = 77):
            super().__init__()
            self.model = CLIPTextModel.from_pretrained(path, attn_implementation="sdpa").eval()
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.max_seq_length = max_seq_length

        def preprocess(self, inputs, prompt=None, **kwargs):
            return self.tokenizer(list(inputs), padding=True, truncation=True, max_length=self.max_seq_length,
                                  return_tensors="pt")

        def forward(self, features, **kwargs):
            output = self.model(input_ids=features["input_ids"], attention_mask=features["attention_mask"])
            features["sentence_embedding"] = output.pooler_output
            return features

        def get_embedding_dimension(self) -> int:
            return self.model.config.hidden_size

        def save(self, output_path, *args, safe_serialization=True, **kwargs):
            self.model.save_pretrained(output_path, safe_serialization=safe_serialization)
            self.tokenizer.save_pretrained(output_path)
            self.save_config(output_path)

    return ClipPooledText


def read_parallel(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    from bench_assets import LANGUAGES

    corpora = {}
    for lang in LANGUAGES[1:]:
        lines = (root / "phase1" / f"{lang}.tsv").read_text(encoding="utf-8").splitlines()[1:]
        pairs = [line.split("\t") for line in lines]
        corpora[lang] = ([en for en, _ in pairs], [other for _, other in pairs])
    return corpora


def run_sentence_transformers(root: Path, workdir: Path, args, meter: RunMeter) -> dict:
    import torch
    from datasets import Dataset, DatasetDict
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.sentence_transformer.modules import Dense, LayerNorm, Pooling, Transformer

    meter.start()
    teacher = SentenceTransformer(modules=[clip_teacher_module()(str(root / "teacher"))], device="cpu")
    encoder = Transformer(str(root / "student"), max_seq_length=77, model_kwargs={"add_pooling_layer": False})
    width = encoder.get_embedding_dimension()
    student = SentenceTransformer(device="cpu", modules=[
        encoder, Pooling(width, pooling_mode="cls"), LayerNorm(width),
        Dense(width, teacher.get_embedding_dimension(), activation_function=torch.nn.Identity())])

    # make_multilingual: one dataset per language pair, labels = the teacher's English embeddings.
    datasets = DatasetDict({
        f"en-{lang}": Dataset.from_dict({"english": english, "non_english": other})
        for lang, (english, other) in read_parallel(root).items()})

    def add_labels(batch):
        return {"label": teacher.encode(batch["english"], batch_size=64, convert_to_numpy=True,
                                        show_progress_bar=False)}

    datasets = datasets.map(add_labels, batched=True, batch_size=30000)
    meter.mark("labels_done")
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(workdir / "st"), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        learning_rate=1e-4, weight_decay=0.1, warmup_steps=5, max_grad_norm=1.0, seed=args.seed,
        eval_strategy="no", save_strategy="no", logging_steps=10, report_to="none", use_cpu=True,
        disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=student, args=training_args, train_dataset=datasets,
                                         loss=losses.MSELoss(model=student))
    trainer.train()
    student.save(str(workdir / "st" / "final"))
    meter.finish()
    return {"optimizer": training_args.optim, "dataloader_num_workers": training_args.dataloader_num_workers}


# ----------------------------------------------------------------------------- entry point
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=RECIPES, required=True)
    parser.add_argument("--assets", default=None, help="bench assets dir (default: built on first use, see bench_assets.py)")
    parser.add_argument("--batch-size", type=int, default=64, help="parallel pairs per step")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=0, help="framework data-loader workers")
    parser.add_argument("--warmup-steps", type=int, default=3, help="steps left out of the steady-state pairs/s")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for every recipe (1: see BENCHMARKS.md, 'shared cores')")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    import torch  # imported before the clock starts, like every library below
    import transformers  # noqa: F401

    torch.set_num_threads(args.threads)
    from bench_assets import ensure_assets, load_manifest

    root = ensure_assets(args.assets)
    manifest = load_manifest(root)
    import datasets  # noqa: F401
    from transformers import CLIPTextModel, XLMRobertaModel  # noqa: F401  (resolve the lazy modules)

    if args.recipe == "sentence-transformers":
        import sentence_transformers.sentence_transformer.losses  # noqa: F401
        import sentence_transformers.sentence_transformer.modules  # noqa: F401
    else:
        import altclip_train.data.parallel  # noqa: F401
        import altclip_train.tasks.distill  # noqa: F401
        import altclip_train.train  # noqa: F401
        from transformers import AltCLIPTextModel  # noqa: F401
    padding = PaddingCounter(manifest["student_vocab"], STUDENT_PAD_ID)
    meter = RunMeter(warmup_steps=args.warmup_steps)
    with tempfile.TemporaryDirectory(prefix=f"bench-p1-{args.recipe}-") as tmp:
        workdir = Path(tmp)
        if args.recipe == "sentence-transformers":
            details = run_sentence_transformers(root, workdir, args, meter)
        else:
            details = run_framework(root, workdir, args, meter, naive=args.recipe == "naive")
    result = {
        "phase": 1, "recipe": args.recipe, "command": this_command(argv), **meter.summary(args.batch_size),
        "student_pad_efficiency": padding.efficiency(), "details": details, "machine": machine(),
        "libraries": library_versions("transformers", "sentence-transformers", "accelerate", "datasets"),
        "assets": manifest,
    }
    write_json(args.json_out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The CLI's error contract and its module layering.

- A bad config or bad data ends with exactly one line on stderr, even after progress bars started: with stderr
  redirected to a file (not a TTY) no bar writes anything, so nothing precedes the error line.
- `cli.py` and `export.py` do not import each other: the helpers both need (`UserError`, the config resolvers)
  live in `errors.py` and `resolvers.py`; only `__main__` imports the CLI.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, write_parallel_tsv

PACKAGE = REPO / "altclip_train"


def cli_env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", ALTCLIP_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=str(REPO))
    for key in ("ALTCLIP_DEBUG", "HYDRA_FULL_ERROR", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS",
                "TQDM_DISABLE"):
        env.pop(key, None)
    return env


def run_cli(args: list[str], tmp_path: Path) -> tuple[int, str]:
    """Run `python -m altclip_train ARGS` with stderr going to a file, as under nohup or SLURM."""
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "wb") as err:
        result = subprocess.run([sys.executable, "-m", "altclip_train", *args], stdout=subprocess.DEVNULL,
                                stderr=err, env=cli_env(tmp_path), cwd=tmp_path, timeout=300)
    return result.returncode, err_path.read_bytes().decode("utf-8", "replace")


# ------------------------------------------------------------------------------------ one line per error
def test_a_data_error_after_a_progress_bar_started_is_the_only_stderr_line(tiny_teacher, tiny_student, tmp_path):
    # The first corpus reads fine (the "reading corpora" bar and transformers' weight-loading bar have run),
    # then the second names a column its file lacks: a data error in phase-1 setup.
    good = write_parallel_tsv(tmp_path / "zh.tsv", "zh", repeat=20)
    bad = tmp_path / "fr.tsv"
    bad.write_text("en\tfr\nhello\tbonjour\n", encoding="utf-8")
    corpora = f"[{{lang: zh, path: '{good}'}}, {{lang: fr, path: '{bad}', source_column: english}}]"
    code, stderr = run_cli(["distill", f"model.teacher={tiny_teacher}", f"model.student={tiny_student}",
                            f"data.corpora={corpora}", f"run_dir={tmp_path / 'run'}", "debug=default",
                            f"cache_dir={tmp_path / 'cache'}", "data.student_max_length=64"], tmp_path)
    assert code == 2
    assert "\r" not in stderr, f"a progress bar wrote to a non-TTY stderr: {stderr!r}"
    assert stderr.splitlines() == [f"altclip-train: error: corpus {bad}: unknown column 'english' (columns: en, fr)"]


def test_a_config_error_is_the_only_stderr_line(tmp_path):
    code, stderr = run_cli(["distill", "experiment=tiny", "trainer.max_stepz=3"], tmp_path)
    assert code == 2
    assert len(stderr.splitlines()) == 1 and stderr.startswith("altclip-train: error: trainer.max_stepz: unknown key")


# ------------------------------------------------------------------------------------ module layering
def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside functions (lazy imports make cycles too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_only_the_entry_point_imports_the_cli():
    importers = sorted(str(path.relative_to(REPO)) for path in PACKAGE.rglob("*.py")
                       if path.name != "__main__.py" and "altclip_train.cli" in imported_modules(path))
    assert importers == []


def test_export_imports_no_cli_module():
    assert not {name for name in imported_modules(PACKAGE / "export.py") if name.startswith("altclip_train.cli")}


@pytest.mark.parametrize("module", ["altclip_train.export", "altclip_train.cli", "altclip_train.resolvers",
                                    "altclip_train.errors"])
def test_each_module_imports_alone_in_a_fresh_interpreter(module, tmp_path):
    # export's main() runs its lazy imports too (argparse exits on --help), and still never loads the CLI.
    code = (f"import sys, importlib; m = importlib.import_module({module!r})\n"
            "if m.__name__ == 'altclip_train.export':\n"
            "    try:\n        m.main(['--help'])\n    except SystemExit:\n        pass\n"
            "    assert 'altclip_train.cli' not in sys.modules, 'export imported the CLI'\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(tmp_path),
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_user_error_and_resolvers_have_one_home():
    import altclip_train.cli as cli
    import altclip_train.errors as errors
    import altclip_train.resolvers as resolvers

    assert cli.UserError is errors.UserError
    assert cli.register_resolvers is resolvers.register_resolvers and cli.latest_output is resolvers.latest_output
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined = {node.name for node in tree.body if isinstance(node, (ast.ClassDef, ast.FunctionDef))}
        if path.name not in ("errors.py", "resolvers.py"):
            assert not defined & {"UserError", "register_resolvers", "latest_output", "record_output"}, path

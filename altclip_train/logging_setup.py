"""Process-wide logging and environment setup shared by the CLI, `train.py` and the tools.

`configure_process()` runs once at CLI start; `setup_logging()` (re)configures the log level, e.g. per
rank once the loop knows which rank it is. Together they keep real warnings visible:

- every log record goes through tqdm's writer, so a warning never lands on a progress bar's line
  (one did: "ran out of samples" hid at the end of a bar); transformers' records, which it normally
  writes straight to stderr, take the same route;
- DeepSpeed's "Setting accelerator to CPU" is dropped unless DeepSpeed is in use: accelerate imports
  deepspeed, whenever it is installed, to unwrap any model, which prints that line on every CPU run;
- `datasets` caches under the project's cache dir (`$ALTCLIP_CACHE_DIR/datasets`) instead of the
  user's home, unless `HF_DATASETS_CACHE` says otherwise;
- progress bars draw only on a terminal: with stderr redirected to a file (nohup, SLURM logs) a bar's
  carriage-return redraws would pile up into one line of noise before the next log line or error, so
  ours are created with tqdm's `disable=None` (off when the stream is not a TTY) and those of transformers,
  huggingface_hub and datasets are switched off (`HF_HUB_DISABLE_PROGRESS_BARS` /
  `HF_DATASETS_DISABLE_PROGRESS_BARS`, unless the user set them). Progress then comes from log lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from tqdm import tqdm

DEFAULT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_DEEPSPEED_CPU_NOTICE = "Setting accelerator to CPU"


class TqdmHandler(logging.StreamHandler):
    """A stream handler that writes through `tqdm.write`, which lifts any open bar out of the way.

    Built without a stream it writes to whatever `sys.stderr` is when each record comes: pytest, notebooks and
    applications that run the CLI in-process swap stderr, and a handler holding the old one would write into a
    closed stream ("--- Logging error ---" in front of the one-line error that should stand alone)."""

    def __init__(self, stream=None):
        super().__init__(stream)
        self.follows_stderr = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if self.follows_stderr else self.stream
            tqdm.write(self.format(record), file=stream)
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never raise; report the way logging does
            self.handleError(record)


class _DropDeepSpeedCpuNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.getMessage().startswith(_DEEPSPEED_CPU_NOTICE) and not deepspeed_in_use())


def deepspeed_in_use() -> bool:
    """Whether this process was launched to train with DeepSpeed (accelerate sets this for its ranks)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def setup_logging(level: int = logging.INFO, fmt: str = DEFAULT_FORMAT, force: bool = True) -> None:
    """Root logging at `level` through one `TqdmHandler` on stderr (replacing any handler there),
    with transformers' records routed to it. With `force=False`, like `logging.basicConfig`, leave
    logging alone if the root logger already has a handler (an embedding application's, pytest's)."""
    root = logging.getLogger()
    if not force and root.handlers:
        return
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    hf_logging.set_verbosity_warning()  # transformers' own default; a library import may have lowered it


def quiet_deepspeed() -> None:
    """Drop DeepSpeed's CPU-detection notice while DeepSpeed is not in use. A filter on its logger
    outlives the logger's own setup at import time, so this works before or after `import deepspeed`."""
    logger = logging.getLogger("DeepSpeed")
    if not any(isinstance(existing, _DropDeepSpeedCpuNotice) for existing in logger.filters):
        logger.addFilter(_DropDeepSpeedCpuNotice())


def default_datasets_cache() -> None:
    """Point `datasets` at the project's cache dir unless the user chose one; before it is imported."""
    from altclip_train.assets import cache_root

    if not os.environ.get("HF_DATASETS_CACHE"):
        os.environ["HF_DATASETS_CACHE"] = str(cache_root() / "datasets")


def progress_bars_off_tty(stream=None) -> bool:
    """Switch library progress bars off when `stream` (default stderr) is not a terminal; returns whether it did.
    Call before transformers/datasets are imported (they read the environment at import); later calls also
    switch off those already imported."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return False
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if "datasets" in sys.modules and os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1":
        import datasets

        datasets.disable_progress_bars()
    return True


def configure_process() -> None:
    """Everything above, once, at CLI start (logging only where nothing configured it yet)."""
    default_datasets_cache()
    quiet_deepspeed()
    progress_bars_off_tty()
    setup_logging(logging.INFO, force=False)


@contextlib.contextmanager
def transformers_errors_only():
    """Silence transformers' warnings for a block whose outcome the caller checks itself (e.g. a load
    report it reads from `output_loading_info`)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)

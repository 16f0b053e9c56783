"""The interop suite (`make test-interop`, run in `.venv-interop`): open_clip and CLIP_benchmark themselves.

Without both libraries importable (the project's own `.venv`) the folder is not collected at all, so `make test`
skips it at no cost. The fixtures of `tests/conftest.py` apply here as everywhere; its helpers are re-exported,
as this file takes the module name `conftest` while the folder's tests run (`from conftest import ...`).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

MISSING = [name for name in ("open_clip", "clip_benchmark") if importlib.util.find_spec(name) is None]
if MISSING:
    collect_ignore_glob = ["*.py"]
else:
    spec = importlib.util.spec_from_file_location("altclip_tests_conftest", Path(__file__).parents[1] / "conftest.py")
    main_conftest = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = main_conftest  # dataclasses look their module up
    spec.loader.exec_module(main_conftest)
    FakeAccelerator = main_conftest.FakeAccelerator
    write_parallel_tsv = main_conftest.write_parallel_tsv
    distill_overrides = main_conftest.distill_overrides

"""Typed schemas for every config group, checked before a run builds anything, so a bad value ends in
one line naming its key (`data.batch_size='abc': expected an integer`), never a traceback.

Each value has one home. The YAML files under `configs/` hold the values; this module holds only
types and choices:
- `optim`, `trainer`, `logger` and the top level: the dataclasses below (fields without a default
  must be set in YAML; fields with one may be left out, and that default is never used as a value);
- `model` and `data`: read from the signature of the callable their `_target_` names (constructor
  annotations), recursively for nested `_target_` nodes, so a parameter added to or removed from a
  data module or task changes what its config accepts with nothing to keep in sync here;
- list entries whose element type is a dataclass (a phase-1 corpus entry: `CorpusSpec`) are checked
  field by field against that dataclass.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import sys
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

from omegaconf import DictConfig, OmegaConf

MISSING = "???"
HYDRA_KEYS = {"_target_", "_convert_", "_recursive_", "_partial_", "_args_"}


class ConfigError(ValueError):
    """A config value that cannot work; the message is one line that names the key."""


@dataclass
class OptimSchema:
    lr: float
    weight_decay: float
    eps: float
    betas: list[float]
    warmup_steps: int
    schedule: Literal["cosine", "linear", "constant"]
    min_lr_ratio: float
    grad_clip: Optional[float]


@dataclass
class TrainerSchema:
    epochs: int
    max_steps: Optional[int]
    grad_accum_steps: int
    mixed_precision: Literal["no", "fp16", "bf16", "fp8"]
    cpu: Union[bool, Literal["auto"]]
    log_every: int
    eval_every: int
    eval_at_start: bool
    save_every: int
    keep_last: Optional[int]
    resume: Optional[str]
    signal_check_every: int
    cpu_threads: Union[int, Literal["auto", "none"], None]
    compile: bool = False  # may be left out (older trainer configs); never a value source


@dataclass
class LoggerSchema:
    trackers: list[Literal["wandb", "tensorboard"]]
    project: str
    entity: Optional[str] = None
    mode: Optional[Literal["offline", "online", "disabled"]] = None
    tags: Optional[list[str]] = None


@dataclass
class RootSchema:
    """The top level of a training config; other top-level keys (e.g. `demo_dir`) are free."""

    phase: str
    name: str
    run_dir: str
    seed: int
    cache_dir: str
    output_root: Optional[str] = None


GROUP_SCHEMAS = {"optim": OptimSchema, "trainer": TrainerSchema, "logger": LoggerSchema}


def validate(cfg: DictConfig) -> None:
    """Check every group of a training config; the first problem raises a one-line ConfigError."""
    missing = next(unset_keys(OmegaConf.to_container(cfg, resolve=False)), None)
    if missing:
        raise ConfigError(f"{missing}: not set; give it on the command line ({missing}=...)")
    check_fields(root_values(cfg), RootSchema, "", strict=False)
    for group, schema in GROUP_SCHEMAS.items():
        check_fields(plain(cfg, group), schema, group)
    for group in ("model", "data"):
        check_target(plain(cfg, group), group)
    for name in ("log_every", "signal_check_every", "grad_accum_steps"):
        if cfg.trainer[name] < 1:
            raise ConfigError(f"trainer.{name}={cfg.trainer[name]}: must be at least 1")


def plain(cfg: DictConfig, group: str) -> Any:
    """A group as plain Python values with interpolations resolved; unset values stay '???'."""
    node = cfg.get(group)
    if node is None:
        raise ConfigError(f"{group}: missing from the config")
    return OmegaConf.to_container(node, resolve=True, throw_on_missing=False)


def unset_keys(node: Any, where: str = ""):
    """Keys left at '???', in config order (found before resolving, which would fail on them)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for name, value in items:
        path = f"{where}[{name}]" if isinstance(node, list) else key(where, name)
        if value == MISSING:
            yield path
        elif path != "hydra":
            yield from unset_keys(value, path)


def root_values(cfg: DictConfig) -> dict[str, Any]:
    values = {}
    for name in (f.name for f in dataclasses.fields(RootSchema)):
        if name in cfg:
            values[name] = MISSING if OmegaConf.is_missing(cfg, name) else cfg[name]
    return values


# --------------------------------------------------------------------------- parameters of a schema
@dataclass(frozen=True)
class Param:
    name: str
    annotation: Any
    required: bool


def dataclass_params(schema: type) -> list[Param]:
    hints = type_hints(schema)
    return [Param(f.name, hints.get(f.name, Any),
                  f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(schema)]


def callable_params(target: Any) -> tuple[list[Param], bool]:
    """The keyword parameters `target` takes, and whether it also takes any other (**kwargs)."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return [], True
    hints = type_hints(target.__init__ if inspect.isclass(target) else target)
    params, open_ended = [], False
    for param in signature.parameters.values():
        if param.kind is param.VAR_KEYWORD:
            open_ended = True
        elif param.kind is not param.VAR_POSITIONAL and param.name != "self":
            params.append(Param(param.name, hints.get(param.name, Any), param.default is param.empty))
    return params, open_ended


def type_hints(obj: Any) -> dict[str, Any]:
    """Evaluated annotations; one that cannot be evaluated (a name imported only for type checking)
    is left unchecked rather than failing the whole schema."""
    try:
        return typing.get_type_hints(obj)
    except Exception:
        hints = {}
        namespace = getattr(obj, "__globals__", None) or vars(inspect.getmodule(obj) or typing)
        for name, annotation in getattr(obj, "__annotations__", {}).items():
            try:
                hints[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation
            except Exception:
                hints[name] = Any
        return hints


# --------------------------------------------------------------------------- checking
def check_fields(values: Any, schema: type, where: str, strict: bool = True) -> None:
    check_params(values, dataclass_params(schema), where, where or "the top level", open_ended=not strict)


def check_target(values: Any, where: str) -> None:
    """A node with `_target_`: its keys must be parameters of that callable, typed as annotated."""
    if not isinstance(values, dict) or "_target_" not in values:
        raise ConfigError(f"{where}: needs a _target_ naming the class or function it builds")
    target = locate(str(values["_target_"]), key(where, "_target_"))
    params, open_ended = callable_params(target)
    check_params(values, params, where, getattr(target, "__qualname__", str(target)), open_ended)
    entries = entry_schemas(target)
    for param in params:
        schema = entries.get(param.name)
        if schema is not None and isinstance(values.get(param.name), list):
            for index, entry in enumerate(values[param.name]):
                check_entry(entry, schema, f"{key(where, param.name)}[{index}]")


def locate(path: str, where: str) -> Any:
    """The object a dotted path names; a module that fails to import says why, in one line."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
                continue  # no such module: the rest of the path are attributes
            raise ConfigError(f"{where}={path}: cannot import it ({error})") from None
        except Exception as error:
            raise ConfigError(f"{where}={path}: cannot import it ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''})") from None
        try:
            for attribute in parts[cut:]:
                obj = getattr(obj, attribute)
        except AttributeError:
            break
        return obj
    raise ConfigError(f"{where}={path}: no such class or function")


def entry_schemas(target: Any) -> dict[str, type]:
    """List parameters of `target` typed as plain dicts whose entries do have a schema (until they are
    annotated with it). Looked up only once `target`'s module is loaded, so phase 2 never imports phase 1."""
    parallel = sys.modules.get("altclip_train.data.parallel")
    if parallel is not None and target is parallel.ParallelTextData:
        from altclip_train.data.corpora import CorpusSpec

        return {"corpora": CorpusSpec}
    return {}


def check_entry(value: Any, schema: type, where: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}={short(value)}: expected a mapping with keys "
                          f"{', '.join(f.name for f in dataclasses.fields(schema))}")
    check_params(value, dataclass_params(schema), where, schema.__name__, open_ended=False)


def check_params(values: Any, params: list[Param], where: str, owner: str, open_ended: bool) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}={short(values)}: expected a mapping")
    by_name = {param.name: param for param in params}
    for name in values:
        if name not in by_name and name not in HYDRA_KEYS and not open_ended:
            close = difflib.get_close_matches(str(name), list(by_name), n=1)
            hint = f"did you mean {close[0]}?" if close else f"{owner} takes {', '.join(by_name)}"
            raise ConfigError(f"{key(where, name)}: unknown key ({hint})")
    for param in params:
        if param.name not in values:
            if param.required:
                raise ConfigError(f"{key(where, param.name)}: required by {owner} but not set")
            continue
        value = values[param.name]
        if value == MISSING:
            raise ConfigError(f"{key(where, param.name)}: not set; give it on the command line "
                              f"({key(where, param.name)}=...)")
        check_value(value, param.annotation, key(where, param.name))


def check_value(value: Any, annotation: Any, where: str) -> None:
    """Raise a ConfigError when `value` does not fit `annotation`; nested targets are checked too."""
    if isinstance(value, dict) and "_target_" in value:
        check_target(value, where)
        return
    if not fits(value, annotation):
        raise ConfigError(f"{where}={short(value)}: expected {describe(annotation)}")
    schema = dataclass_in(annotation)
    if schema is not None and isinstance(value, list):
        for index, entry in enumerate(value):
            check_entry(entry, schema, f"{where}[{index}]")
    elif schema is not None and isinstance(value, dict):
        check_entry(value, schema, where)


def fits(value: Any, annotation: Any) -> bool:
    if annotation is Any or annotation is inspect.Parameter.empty or isinstance(annotation, typing.TypeVar):
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union or origin is types.UnionType:
        return any(fits(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str or annotation is bytes:
        # Names and paths may be numbers on the command line (name=2024); not bools or containers.
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)
    base = origin or annotation
    if dataclasses.is_dataclass(base):
        return isinstance(value, dict)
    if inspect.isclass(base) and issubclass(base, (Mapping, dict)):
        return isinstance(value, dict) and all(fits(v, args[1]) for v in value.values()) if len(args) == 2 \
            else isinstance(value, dict)
    if inspect.isclass(base) and issubclass(base, (Sequence, Iterable, list, tuple, set)) and base is not str:
        if not isinstance(value, list):
            return False
        if base is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args))
        return not args or all(fits(v, args[0]) for v in value)
    # Anything else (a module, a dtype, a callable) can only come from a nested `_target_`.
    return not isinstance(value, (str, int, float, bool, list)) or value is None


def dataclass_in(annotation: Any) -> type | None:
    """The dataclass a value or its list entries must follow, if the annotation names one."""
    if dataclasses.is_dataclass(annotation) and inspect.isclass(annotation):
        return annotation
    for arg in typing.get_args(annotation):
        found = dataclass_in(arg)
        if found is not None:
            return found
    return None


def describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union or origin is types.UnionType:
        return " or ".join(dict.fromkeys(describe(arg) for arg in args))
    if origin is Literal:
        return "one of " + ", ".join(str(arg) for arg in args)
    if annotation is None or annotation is type(None):
        return "null"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if annotation in names:
        return names[annotation]
    base = origin or annotation
    if dataclasses.is_dataclass(base):
        return f"a mapping of {base.__name__} fields"
    if inspect.isclass(base) and issubclass(base, (Mapping, dict)):
        return "a mapping"
    if inspect.isclass(base) and issubclass(base, (Sequence, Iterable)):
        return f"a list of {plural(describe(args[0]))}" if args else "a list"
    return getattr(annotation, "__name__", str(annotation))


def plural(description: str) -> str:
    words = {"a mapping": "mappings", "a string": "strings", "an integer": "integers", "a number": "numbers",
             "true or false": "true/false values"}
    return words.get(description, description)


def key(where: str, name: Any) -> str:
    return f"{where}.{name}" if where else str(name)


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

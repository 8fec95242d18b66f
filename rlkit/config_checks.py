"""What `rlkit.config`'s validators call, and how their failures read.

- `check_model_path`, `resolve_name`, `build_component`, `dry_run_estimator`: a field's value
  checked against the filesystem or a registry (a component is built, an estimator run once
  on a dummy batch), each failure a ValueError naming the field;
- `format_error` / `raise_config_error`: pydantic's errors turned into one line each, the
  field path, the bad value, what is accepted and, for a typo, the closest valid key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from rlkit.config_yaml import ConfigError
from rlkit.registry import Registry, UnknownNameError

__all__ = ["build_component", "check_model_path", "dry_run_estimator", "format_error", "raise_config_error",
           "resolve_name", "unknown_name"]


def check_model_path(field: str, value: str) -> None:
    """A local model path must hold a model; aliases and hub ids ("org/name") pass."""
    from rlkit.assets import MODEL_ALIASES

    path = Path(value).expanduser()
    local = value.startswith(("/", ".", "~")) or value.count("/") > 1 or path.is_dir()
    if value in MODEL_ALIASES or not local:
        return
    if not path.is_dir():
        raise ValueError(f"{field}: {value} does not exist (a local path; a hub id looks like 'org/name', "
                         f"an embedded alias is one of {', '.join(MODEL_ALIASES)})")
    weights = [p for pattern in ("*.safetensors", "*.bin", "*.safetensors.index.json") for p in path.glob(pattern)]
    if not (path / "config.json").is_file() or not weights:
        raise ValueError(f"{field}: {value} is a directory but holds no model (config.json and *.safetensors or "
                         f"*.bin); found {sorted(p.name for p in path.iterdir())[:8]}")


def resolve_name(registry: Registry, name: str, field: str, what: str) -> Any:
    """registry.get(name), its errors at `field`: a name -> did-you-mean, a path -> why it failed."""
    try:
        return registry.get(name)
    except UnknownNameError:
        raise ValueError(unknown_name(field, name, registry.names(), what)) from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{field}: {exc}") from None


def dry_run_estimator(registry: Registry, spec: Any, group_size: int, needs_answers: bool) -> None:
    """Call the bound estimator once on a tiny dummy batch (2 groups of `group_size` rows,
    rewards 0/1, a full 2-token mask, all-distinct answers if it takes them), so that a value
    only the function checks (riskpo's alpha >= beta, grpo's scale) fails at `advantage.params`."""
    import torch

    fn = registry.bind(spec.name, spec.params, path="advantage.params")
    n = 2 * group_size
    rows = torch.arange(n)  # [n]
    extra = {"answers": rows} if needs_answers else {}
    try:
        fn((rows % 2).float(), rows // group_size, mask=torch.ones(n, 2, dtype=torch.bool), **extra)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"advantage.params: {exc}") from None


def build_component(registry: Registry, name: str, params: dict[str, Any], path: str) -> Any:
    """Build a component from its params: an unknown or missing parameter fails at
    `<path>.<param>` (ParamError), a value the constructor refuses at `<path>`."""
    make = registry.bind(name, params, path=path)
    try:
        return make()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


# ----------------------------------------------------------------------------- errors


def unknown_name(path: str, value: str, known: list[str], what: str) -> str:
    msg = f"{path}: unknown value '{value}'"
    close = difflib.get_close_matches(value, known, n=1)
    if close:
        msg += f"; did you mean '{close[0]}'?"
    return msg + f" Known {what}: {', '.join(sorted(known))}."


def _model_at(root: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class under `root` that owns the field at `path` (for typo suggestions)."""
    model: Any = root
    for part in path:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        inner = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif inner:
            model = inner[0]
        else:
            return None
    return model


def format_error(err: dict[str, Any], root: type[BaseModel]) -> str:
    """One pydantic error as rlkit's message: the field path, the bad value, what is accepted."""
    loc = tuple(err.get("loc", ()))
    path = ".".join(str(p) for p in loc) or "<root>"
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        owner = _model_at(root, loc[:-1])
        msg = f"config error at {path}: unknown key"
        if owner is not None:
            keys = [f.alias or name for name, f in owner.model_fields.items()]
            close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
            msg += f"; did you mean '{close[0]}'?" if close else "."
            msg += f" Valid keys here: {', '.join(keys)}."
        return msg
    if kind == "missing":
        owner = _model_at(root, loc[:-1])
        desc = ""
        if owner is not None and loc and loc[-1] in owner.model_fields:
            desc = owner.model_fields[loc[-1]].description or ""
        return f"config error at {path}: required field is missing. {desc}".rstrip()
    text = err.get("msg", "invalid value")
    if kind.startswith("value_error") and text.startswith("Value error, "):
        text = text[len("Value error, ") :]
        head = text.split(":", 1)[0]
        if " " not in head and ":" in text:  # the validator already named the exact field
            return f"config error at {text}"
        first = text.split(" ", 1)[0]
        if loc == () or (first.startswith(path) and "." in first):  # the validator named the field
            return f"config error: {text}"
    got = err.get("input")
    shown = repr(got) if not isinstance(got, dict) else "{...}"
    return f"config error at {path}: got {shown}; {text[0].lower() + text[1:] if text else text}"


def raise_config_error(exc: ValidationError, root: type[BaseModel]) -> None:
    """ConfigError with one line per error of `exc` (a validation of `root`)."""
    lines = [format_error(e, root) for e in exc.errors(include_url=False)]
    raise ConfigError("\n".join(lines)) from None

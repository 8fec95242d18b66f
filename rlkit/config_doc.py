"""The config reference (docs/config.md), generated from the pydantic models of rlkit/config.py.

Every field of `RecipeConfig`, nested sections and the items of lists of sections included, is
written with its full dotted path (`model.lora.r`; list items as `rewards[].name`), a readable
type (Literal choices listed, `X | None`), its default (default factories evaluated), the
constraints pydantic enforces (`> 0`, `length >= 1`) and its description. Fields that name a
registered component list the registered names, and a last part lists every registered
component with the params it accepts. Nothing is written by hand, so the reference cannot
drift from the models; tests/unit/test_config_doc.py fails when docs/config.md is stale.

Regenerate:  rlkit config --doc > docs/config.md   (or: python -m rlkit.config_doc > docs/config.md)
"""

from __future__ import annotations

import importlib
import inspect
import json
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from rlkit.config import RecipeConfig
from rlkit.registry import Registry

__all__ = ["CHOICES", "REGENERATE", "FieldDoc", "config_fields", "config_reference_markdown", "render_default",
           "render_type"]

REGENERATE = "rlkit config --doc > docs/config.md"

# Fields whose value is a name looked up at validation (rlkit/config.py resolves each one in
# this registry or table): path -> (module, attribute, how the names are introduced).
# tests/unit/test_config_doc.py checks that every path here is a field, so a renamed field
# cannot leave a stale entry behind.
CHOICES: dict[str, tuple[str, str, str]] = {
    "model.name_or_path": ("rlkit.assets", "MODEL_ALIASES", "Embedded models"),
    "data.sampler.name": ("rlkit.data.samplers", "SAMPLERS", "Registered"),
    "rewards[].name": ("rewards", "REWARDS", "Registered"),
    "advantage.name": ("rlkit.algorithms.advantages", "ADVANTAGES", "Registered"),
    "advantage.answer_extractor": ("rlkit.algorithms.answers", "ANSWER_EXTRACTORS", "Registered"),
    "loss.name": ("rlkit.algorithms.losses", "LOSSES", "Registered"),
    "regularizers[].name": ("rlkit.algorithms.regularizers", "REGULARIZERS", "Registered"),
    "token_weights.name": ("rlkit.algorithms.token_weights", "TOKEN_WEIGHTS", "Registered"),
    "mixing.name": ("rlkit.algorithms.mixing", "MIXERS", "Registered"),
    "diagnostics.stop_on": ("rlkit.diagnostics.alarms", "ALARM_NAMES", "Alarms"),
}

# Registries whose entries take no params from the config: listed by name only.
_NAME_ONLY = {"advantage.answer_extractor": "Functions of the completion text (text -> answer or None):"}

_CONSTRAINTS = (
    (annotated_types.Gt, "gt", "> {}"),
    (annotated_types.Ge, "ge", ">= {}"),
    (annotated_types.Lt, "lt", "< {}"),
    (annotated_types.Le, "le", "<= {}"),
    (annotated_types.MinLen, "min_length", "length >= {}"),
    (annotated_types.MaxLen, "max_length", "length <= {}"),
    (annotated_types.MultipleOf, "multiple_of", "multiple of {}"),
)


@dataclass(frozen=True)
class FieldDoc:
    """One documented field."""

    path: str  # "model.lora.r"; items of a list of sections: "rewards[].name"
    type: str  # readable type, e.g. '"auto" | "float32"', "list[str]", "int | None"
    default: str  # JSON of the default, "required", or "section" for a section built from its defaults
    constraints: str  # "> 0, <= 1", "" when none
    description: str
    choices: tuple[str, ...]  # registered names the value may take ("" when not registry-backed)


# ----------------------------------------------------------------------------- the walk


def _section_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the section model inside `annotation`, whether it is a list of them): `LoraConfig | None`
    -> (LoraConfig, False), `list[RewardSpec]` -> (RewardSpec, True), `int` -> (None, False)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is list and args:
        inner, _ = _section_of(args[0])
        return inner, inner is not None
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            inner, is_list = _section_of(arg)
            if inner is not None:
                return inner, is_list
    return None, False


def render_type(annotation: Any) -> str:
    """A type as a reader of the YAML thinks of it: Literal choices spelled out, sections as `section`."""
    if annotation is type(None):
        return "None"
    if annotation is Any:
        return "Any"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(render_type(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(render_type(a) for a in args)}]" if args else name
    return getattr(annotation, "__name__", str(annotation))


def render_default(field: FieldInfo) -> str:
    """JSON of the default (a factory is called), "required", or "section" when the default is a
    section built from its own defaults (its fields are listed under it)."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "section"
    return json.dumps(to_jsonable_python(value, by_alias=True))


def _constraints(field: FieldInfo) -> str:
    out = []
    for meta in field.metadata:
        for kind, attr, fmt in _CONSTRAINTS:
            if isinstance(meta, kind):
                out.append(fmt.format(getattr(meta, attr)))
    return ", ".join(out)


def _choices(path: str) -> tuple[str, ...]:
    if path not in CHOICES:
        return ()
    module, attr, _ = CHOICES[path]
    table = getattr(importlib.import_module(module), attr)
    if isinstance(table, Registry):
        return tuple(name for name in table.names() if _builtin(table.get(name)))
    return tuple(table)


def _builtin(obj: Any) -> bool:
    """Shipped with rlkit (a test or a user session may register more; the reference lists what ships)."""
    return getattr(obj, "__module__", "").split(".")[0] in ("rlkit", "rewards")


def _walk(model: type[BaseModel], prefix: str) -> Iterator[FieldDoc]:
    for name, field in model.model_fields.items():
        key = field.alias or name
        path = f"{prefix}.{key}" if prefix else key
        yield FieldDoc(path=path, type=render_type(field.annotation), default=render_default(field),
                       constraints=_constraints(field), description=field.description or "",
                       choices=_choices(path))
        section, is_list = _section_of(field.annotation)
        if section is not None:
            yield from _walk(section, path + ("[]" if is_list else ""))


def config_fields(model: type[BaseModel] = RecipeConfig) -> list[FieldDoc]:
    """Every field of `model`, depth first in declaration order (a section's row, then its fields)."""
    return list(_walk(model, ""))


# ----------------------------------------------------------------------------- markdown


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{_cell(text)}`" if text else ""


def _row(doc: FieldDoc) -> str:
    desc = doc.description
    if doc.choices:
        desc += f" {CHOICES[doc.path][2]}: {', '.join(f'`{c}`' for c in doc.choices)}."
    return (f"| {_code(doc.path)} | {_code(doc.type)} | {_code(doc.default)} | {_cell(doc.constraints)} "
            f"| {_cell(desc)} |")


def _params(registry: Registry, obj: Any) -> str:
    """`name=default` for each param the component accepts (registry's reading of its signature)."""
    sig = registry.signature(obj)
    # a class: its __init__ and the bases' ones it forwards **kwargs to (the nearest default wins)
    fns = [k.__dict__["__init__"] for k in obj.__mro__ if "__init__" in k.__dict__] if isinstance(obj, type) else [obj]
    defaults: dict[str, Any] = {}
    for fn in fns:
        for p in inspect.signature(fn).parameters.values():
            if p.default is not inspect.Parameter.empty:
                defaults.setdefault(p.name, p.default)
    out = []
    for name in sig.accepted:
        if name in sig.required:
            out.append(f"{name} (required)")
        elif name in defaults:
            out.append(f"{name}={json.dumps(to_jsonable_python(defaults[name], fallback=repr))}")
        else:  # a positional parameter without a default: a reward's dataset column, filled per row
            out.append(f"{name} (from the row)")
    return ", ".join(out) or "(none)"


def _components() -> list[str]:
    lines = ["## Registered components", "",
             "What the `name` fields above accept, and the `params` each component takes (read from its "
             "signature, as validation checks them). A component of your own is named by its import path, "
             "`pkg.module:attr`.", ""]
    for path, (module, attr, _) in CHOICES.items():
        table = getattr(importlib.import_module(module), attr)
        if not isinstance(table, Registry):
            continue
        lines += [f"### {table.kind} (`{path}`)", ""]
        names = [name for name in table.names() if _builtin(table.get(name))]
        if path in _NAME_ONLY:
            lines += [_NAME_ONLY[path] + " " + ", ".join(f"`{n}`" for n in names) + ".", ""]
            continue
        lines += ["| Name | Params |", "|---|---|"]
        lines += [f"| `{name}` | {_cell(_params(table, table.get(name)))} |" for name in names]
        lines.append("")
    return lines


def config_reference_markdown() -> str:
    """docs/config.md: one table per top-level field of RecipeConfig, then the registered components."""
    lines = [
        "# Config reference",
        "",
        f"<!-- Generated from rlkit/config.py by rlkit/config_doc.py; do not edit. Regenerate: {REGENERATE} -->",
        "",
        "Generated from the pydantic models in `rlkit/config.py`; do not edit by hand. Regenerate with",
        "",
        f"    {REGENERATE}",
        "",
        "A recipe YAML sets these fields (anything left out takes its default); on the command line "
        "`a.b.c=value` overrides one (list items by index: `rewards.0.weight=0.5`). "
        "`rlkit config --show FILE [a.b=c ...]` prints the resolved config. Paths below write the items of "
        "a list of sections as `rewards[].name`. Defaults are JSON (`null` = unset).",
        "",
    ]
    header = ["| Field | Type | Default | Constraints | Description |", "|---|---|---|---|---|"]
    for doc in config_fields():
        if "." not in doc.path.replace("[]", "."):  # a top-level field opens a part
            if lines[-1]:  # after the previous part's table
                lines.append("")
            lines += [f"## `{doc.path}`", "", *header]
        lines.append(_row(doc))
    lines += ["", *_components()]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(config_reference_markdown(), end="")

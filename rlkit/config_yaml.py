"""Reading a recipe YAML and applying `a.b.c=value` overrides, before validation.

Kept apart from the pydantic models in `rlkit/config.py`: this part knows YAML, not the
config's fields. `ConfigError` lives here so both modules raise the same error;
`rlkit.config` re-exports it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A recipe config is invalid. The message is meant for the user, verbatim."""


def _parse_scalar(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader) if text != "" else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML scalars/lists) to a raw dict."""
    for item in overrides:
        try:
            _apply_override(raw, item)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': the value is not valid YAML: {exc}") from None
        except (IndexError, ValueError, TypeError, KeyError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"override '{item}' does not fit the config's structure: {exc}") from None
    return raw


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form a.b.c=value")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node: Any = raw
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
            continue
        node = node.setdefault(part, {})
        if not isinstance(node, dict | list):
            raise ConfigError(f"override '{key}': '{part}' is not a section")
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = _parse_scalar(value)
    else:
        node[last] = _parse_scalar(value)


class _DuplicateKeyError(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key set twice in one mapping (PyYAML keeps the last one
    silently: `max_steps: 10 ... max_steps: 50` would train 50 steps without a word), and
    reads `2e-5` as a number (YAML 1.1 wants `2.0e-5` and would hand an untyped param, such as
    `mixing.params.lr`, the string "2e-5")."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKeyError(f"duplicate key '{key}' at lines {seen[key]} and {line}; "
                                         "YAML would silently keep the second, so say it once")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A recipe YAML file as a raw dict (before validation); ConfigError for a missing file,
    invalid YAML, a key set twice, or a top level that is not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}  # a SafeLoader: no code runs
    except _DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw

"""The config reference (rlkit/config_doc.py -> docs/config.md).

docs/config.md must be the generator's output (regenerated after every config change), and an
independent walk of the pydantic models checks that every field is in it with its type, default,
constraints and a non-empty description: a field added without a description fails here.
"""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Literal

import annotated_types
import pytest
from pydantic import BaseModel, Field
from pydantic_core import to_jsonable_python

from rlkit.config import RecipeConfig
from rlkit.config_doc import CHOICES, REGENERATE, FieldDoc, config_fields, config_reference_markdown

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "config.md"


@pytest.fixture(scope="module")
def reference() -> str:
    return config_reference_markdown()


def test_docs_config_md_is_up_to_date(reference):
    assert DOC.read_text() == reference, f"docs/config.md is stale; regenerate it: {REGENERATE}"


def test_header_says_generated_and_how_to_regenerate(reference):
    assert reference.startswith("# Config reference\n")
    assert "do not edit by hand" in reference
    assert f"    {REGENERATE}\n" in reference


# ----------------------------------------------------------------------------- every field


def _model_in(annotation) -> tuple[type[BaseModel] | None, bool]:
    """The BaseModel inside an annotation (X, X | None, list[X]) and whether it is a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    for arg in typing.get_args(annotation):
        model, is_list = _model_in(arg)
        if model is not None:
            return model, is_list or typing.get_origin(annotation) is list
    return None, False


def _walk(model: type[BaseModel], prefix: str = ""):
    """(path, FieldInfo) of every field, depth first; written independently of the generator."""
    for name, field in model.model_fields.items():
        path = f"{prefix}.{field.alias or name}" if prefix else field.alias or name
        yield path, field
        inner, is_list = _model_in(field.annotation)
        if inner is not None:
            yield from _walk(inner, path + "[]" if is_list else path)


def _cells(reference: str, path: str) -> list[str]:
    """The 5 cells (field, type, default, constraints, description) of the row of `path`."""
    rows = [line for line in reference.splitlines() if line.startswith(f"| `{path}` |")]
    assert len(rows) == 1, f"{path}: {len(rows)} rows in the reference"
    cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", rows[0])[1:-1]]
    assert len(cells) == 5, rows[0]
    return [c[1:-1] if c.startswith("`") and c.endswith("`") else c for c in cells]


def test_every_field_has_a_description():
    missing = [path for path, field in _walk(RecipeConfig) if not (field.description or "").strip()]
    assert missing == [], f"config fields without a description (add Field(description=...)): {missing}"


def test_the_walk_sees_a_missing_description():
    # The check above can fail: a model with an undocumented field, nested in a list.
    class Inner(BaseModel):
        documented: int = Field(1, description="yes")
        bare: int = 2

    class Outer(BaseModel):
        items: list[Inner] = Field(default_factory=list, description="a list of sections")

    assert [p for p, f in _walk(Outer) if not f.description] == ["items[].bare"]


def test_every_field_is_in_the_reference_with_type_default_and_constraints(reference):
    paths = []
    for path, field in _walk(RecipeConfig):
        paths.append(path)
        _, type_cell, default_cell, constraint_cell, desc_cell = _cells(reference, path)
        # type: each Literal choice, None for optional fields, the container or scalar name
        ann = field.annotation
        args = typing.get_args(ann)
        for choice in (a for arg in (ann, *args) if typing.get_origin(arg) is Literal for a in typing.get_args(arg)):
            assert json.dumps(choice) in type_cell, (path, type_cell)
        assert ("None" in type_cell) == (type(None) in args), (path, type_cell)
        if typing.get_origin(ann) in (list, dict, tuple):
            assert type_cell.startswith(typing.get_origin(ann).__name__ + "["), (path, type_cell)
        elif ann in (int, float, str, bool):
            assert type_cell == ann.__name__, (path, type_cell)
        # default: the value itself (a factory called); sections built from defaults say so
        if field.is_required():
            assert default_cell == "required", path
        else:
            value = field.get_default(call_default_factory=True)
            if isinstance(value, BaseModel):
                assert default_cell == "section", path
            else:
                assert json.loads(default_cell) == to_jsonable_python(value), (path, default_cell)
        # constraints: every bound pydantic enforces
        for meta in field.metadata:
            for kind, attr, sign in ((annotated_types.Gt, "gt", ">"), (annotated_types.Ge, "ge", ">="),
                                     (annotated_types.Lt, "lt", "<"), (annotated_types.Le, "le", "<=")):
                if isinstance(meta, kind):
                    bound = getattr(meta, attr)
                    assert f"{sign} {bound}" in constraint_cell.split(", "), (path, constraint_cell)
            if isinstance(meta, annotated_types.MinLen):
                assert f"length >= {meta.min_length}" in constraint_cell, (path, constraint_cell)
        assert desc_cell.startswith(field.description.replace("\n", " ")), path
    # and nothing else: the generator documents exactly the fields there are
    assert [d.path for d in config_fields()] == paths
    assert len(paths) > 100  # guards the walk itself (RecipeConfig had 127 fields on 2026-12-01)


def test_hand_checked_rows(reference):
    assert _cells(reference, "model.lora.dropout")[1:4] == ["float", "0.0", ">= 0, < 1"]
    assert _cells(reference, "model.lora")[1:3] == ["section | None", "null"]
    assert _cells(reference, "trainer.zero_stage")[1:3] == ["0 | 1 | 2 | 3", "2"]
    assert _cells(reference, "model.dtype")[1:3] == ['"auto" | "float32" | "bfloat16" | "float16"', '"auto"']
    assert _cells(reference, "rewards")[1:4] == [
        "list[section]", '[{"name": "math_accuracy", "weight": 1.0, "params": {}, "conversational": false}]', "length >= 1"]
    assert _cells(reference, "loss.class")[1:3] == ["str | None", "null"]  # by its YAML alias
    assert _cells(reference, "logging.trackers")[1:3] == ['list["wandb" | "mlflow"]', "[]"]
    assert _cells(reference, "trainer.adam_betas")[1:3] == ["tuple[float, float]", "[0.9, 0.99]"]


# ----------------------------------------------------------------------------- registered names


def test_name_fields_list_their_registered_names(reference):
    from rewards import REWARDS
    from rlkit.algorithms.losses import LOSSES
    from rlkit.diagnostics.alarms import ALARM_NAMES

    docs = {d.path: d for d in config_fields()}
    assert set(CHOICES) <= set(docs), f"CHOICES names no field: {set(CHOICES) - set(docs)}"
    assert set(docs["loss.name"].choices) == set(LOSSES.names()) >= {"grpo", "dapo", "gspo", "hapo"}
    assert set(docs["rewards[].name"].choices) == set(REWARDS.names()) >= {"exact_number", "math_accuracy"}
    assert docs["diagnostics.stop_on"].choices == ALARM_NAMES
    assert docs["model.name_or_path"].choices == ("smollm2-135m",)
    assert "Registered: `cispo`, `dapo`, `dr_grpo`, `grpo`," in _cells(reference, "loss.name")[4]
    assert "Alarms: `entropy_collapse`, `zero_adv_saturation`," in _cells(reference, "diagnostics.stop_on")[4]


def test_a_name_registered_outside_rlkit_is_not_listed():
    # A test or a session may register its own; the reference lists what ships.
    from rlkit.algorithms.regularizers import LLDS, REGULARIZERS

    class Mine(LLDS):
        pass

    Mine.__module__ = "my_pkg.regs"
    REGULARIZERS.register("mine_test_only")(Mine)
    try:
        docs = {d.path: d for d in config_fields()}
        assert "mine_test_only" not in docs["regularizers[].name"].choices
        assert "llds" in docs["regularizers[].name"].choices
    finally:
        REGULARIZERS.unregister("mine_test_only")


def test_component_params_with_their_defaults(reference):
    # Values from the signatures: GRPOLoss(clip_low=0.2, clip_high=0.2, ...), VADESampler(prior_alpha=1.0, ...)
    assert re.search(r"^\| `grpo` \| clip_low=0\.2, clip_high=0\.2, ", reference, re.M)
    assert "| `vade` | prior_alpha=1.0, prior_beta=1.0, global_decay=0.99, sample_decay=0.95 |" in reference
    # a reward's dataset column vs its settings
    assert "| `overlong_penalty` | completion_lengths (from the row), max_len (required), cache_len (required) |" \
        in reference
    assert "Functions of the completion text (text -> answer or None): `last_number`, `math_verify`." in reference


# ----------------------------------------------------------------------------- generality


def test_generator_on_a_model_of_its_own():
    # Every shape a config field takes, documented exactly: nested optional section, list of
    # sections, Literal, default factory, constraints, alias.
    class Leaf(BaseModel):
        k: int = Field(3, ge=1, le=9, description="k.")

    class Item(BaseModel):
        name: str = Field(..., min_length=1, description="item name.")

    class Top(BaseModel):
        mode: Literal["a", "b"] = Field("a", description="mode.")
        leaf: Leaf | None = Field(None, description="optional leaf.")
        items: list[Item] = Field(default_factory=lambda: [Item(name="x")], description="items.")
        tags: list[str] = Field(default_factory=lambda: ["t"], description="tags.")
        klass: str | None = Field(None, alias="class", description="aliased.")
        rate: float = Field(0.5, gt=0, lt=1, description="rate.")

    assert config_fields(Top) == [
        FieldDoc("mode", '"a" | "b"', '"a"', "", "mode.", ()),
        FieldDoc("leaf", "section | None", "null", "", "optional leaf.", ()),
        FieldDoc("leaf.k", "int", "3", ">= 1, <= 9", "k.", ()),
        FieldDoc("items", "list[section]", '[{"name": "x"}]', "", "items.", ()),
        FieldDoc("items[].name", "str", "required", "length >= 1", "item name.", ()),
        FieldDoc("tags", "list[str]", '["t"]', "", "tags.", ()),
        FieldDoc("class", "str | None", "null", "", "aliased.", ()),
        FieldDoc("rate", "float", "0.5", "> 0, < 1", "rate.", ()),
    ]

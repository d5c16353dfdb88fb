"""Dagster run-config classes generated from the core pydantic config models.

The core models are the single source of truth for fields, defaults and rules. Each field here is
optional (None = "use the profile preset or the core default") and typed with what Dagster's
config system accepts; the core model validates the merged values and its error names the field
and the rule, e.g. `dtype: Input should be 'float32', 'bfloat16' or 'float16'`.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Literal, Optional, Union, get_args, get_origin

import dagster as dg
from pydantic import BaseModel, Field, create_model


def _dagster_type(ann: object) -> object:
    origin = get_origin(ann)
    if origin is Literal:
        return type(get_args(ann)[0])
    if ann is Path:
        return str
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(ann) if a is not type(None)]
        return _dagster_type(args[0]) if len(args) == 1 else str
    if origin is dict:
        return dict[str, _dagster_type(get_args(ann)[1])]
    if origin in (list, tuple):
        args = get_args(ann)
        return list[_dagster_type(args[0] if args else str)]
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return dict
    return ann


def _describe(name: str, field: object) -> str:
    desc = getattr(field, "description", None) or ""
    ann = getattr(field, "annotation", None)
    allowed = [a for a in _literal_args(ann)]
    if allowed:
        desc = f"{desc} Allowed: {', '.join(map(str, allowed))}.".strip()
    default = getattr(field, "default", None)
    if default is not None and not callable(default) and "PydanticUndefined" not in repr(default):
        desc = f"{desc} Default: {default!r}.".strip()
    return desc or name


def _literal_args(ann: object) -> tuple:
    if get_origin(ann) is Literal:
        return get_args(ann)
    if get_origin(ann) in (Union, types.UnionType):
        for a in get_args(ann):
            if get_origin(a) is Literal:
                return get_args(a)
    return ()


def dagster_config(
    core: type[BaseModel], name: str, exclude: tuple[str, ...] = (), **extra: tuple[object, object]
) -> type[dg.Config]:
    """A `dg.Config` subclass with every field of `core` (minus `exclude`) optional."""
    fields: dict[str, tuple[object, object]] = {}
    for fname, f in core.model_fields.items():
        if fname in exclude:
            continue
        fields[fname] = (
            Optional[_dagster_type(f.annotation)],
            Field(default=None, description=_describe(fname, f)),
        )
    fields.update(extra)
    return create_model(name, __base__=dg.Config, **fields)  # type: ignore[call-overload]

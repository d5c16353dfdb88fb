"""The base of every config model, and how layers of settings are merged.

A stage's settings come from three layers, later ones winning: the field defaults of its config
model (the seed's values, documented on the fields), the active profile's preset
(`minillm_core.profiles`), and what the user passed (command-line flags, Dagster run config).
A value of None in a layer means "not set here", so an unset flag never hides a preset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

C = TypeVar("C", bound="CoreConfig")


class ConfigError(ValueError):
    """Invalid settings; the message names each bad field and the rule it broke."""


class CoreConfig(BaseModel):
    """Base for config models: unknown fields are errors (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @classmethod
    def resolve(cls: type[C], *layers: Mapping[str, Any] | None) -> C:
        """Build from layers of settings, later layers winning; None values are skipped."""
        merged: dict[str, Any] = {}
        for layer in layers:
            for key, value in (layer or {}).items():
                if value is not None:
                    merged[key] = value
        try:
            return cls(**merged)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(cls.__name__, exc)) from None


def format_validation_error(name: str, exc: ValidationError) -> str:
    lines = [f"invalid {name}:"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(model)"
        lines.append(f"  {field}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)

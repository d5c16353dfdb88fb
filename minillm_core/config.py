"""The base of every config model, and how layers of settings are merged.

A stage's settings come from three layers, later ones winning: the field defaults of its config
model (the seed's values, documented on the fields), the active profile's preset
(`minillm_core.profiles`), and what the user passed (command-line flags, Dagster run config).
A value of None in a layer means "not set here", so an unset flag never hides a preset.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from minillm_core.errors import ConfigError

C = TypeVar("C", bound="CoreConfig")


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


# torch device strings a config may name: cpu, cuda, cuda:N, mps (and auto where a model allows it).
_DEVICE = re.compile(r"(cpu|cuda(:\d+)?|mps)")


def validate_device(value: str, allow_auto: bool = False) -> str:
    """The device string if torch understands it, else ValueError naming the allowed forms
    (`torch.device('gpu')` would only fail later, deep inside a run)."""
    if (allow_auto and value == "auto") or (isinstance(value, str) and _DEVICE.fullmatch(value)):
        return value
    allowed = "cpu, cuda, cuda:N, mps" + (", auto" if allow_auto else "")
    raise ValueError(f"unknown device {value!r}; allowed: {allowed}")


def check_within_roots(
    values: Mapping[str, Any], roots: Iterable[Path | str], fields: Iterable[str]
) -> None:
    """ConfigError naming each of `fields` in `values` whose path resolves outside every root
    (symlinks and `..` resolved): run config must not send outputs elsewhere on the machine."""
    bases = [Path(r).expanduser().resolve() for r in roots]
    bad = []
    for name in fields:
        value = values.get(name)
        if value in (None, ""):
            continue
        path = Path(str(value)).expanduser().resolve()
        if not any(path == b or b in path.parents for b in bases):
            bad.append(
                f"  {name}: {value!r} resolves to {path}, outside the configured roots "
                f"({', '.join(map(str, bases))})"
            )
    if bad:
        raise ConfigError("output paths must stay inside the artifact roots:\n" + "\n".join(bad))

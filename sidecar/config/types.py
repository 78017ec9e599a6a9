"""Value types shared by every configuration model: durations, names, the frozen base model."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

__all__ = ["NAME_PATTERN", "Duration", "FrozenModel", "Name", "NonNegativeDuration",
           "parse_duration"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,62}$"


def parse_duration(value: Any) -> Any:
    """Turn "250ms" / "1.5s" / "2m" / "1h" into seconds; numbers pass through."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"invalid duration {value!r}: use a number of seconds or "
                             "a string like '250ms', '1.5s', '2m'")
        return float(match.group(1)) * _UNITS[match.group(2)]
    return value


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    Field(gt=0, le=86_400),
    WithJsonSchema({
        "anyOf": [
            {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
            {"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h)$"},
        ],
        "description": "Seconds, or a string with a unit: '250ms', '1.5s', '2m', '1h'.",
    }),
]
Name = Annotated[str, Field(pattern=NAME_PATTERN,
                            description="Letters, digits, '_', '.', '-'; at most 63.")]


class FrozenModel(BaseModel):
    """Frozen (a snapshot never changes) and strict (an unknown field is an error)."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

NonNegativeDuration = Annotated[
    float,
    BeforeValidator(parse_duration),
    Field(ge=0, le=86_400),
    WithJsonSchema({
        "anyOf": [
            {"type": "number", "minimum": 0, "maximum": 86400},
            {"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h)$"},
        ],
        "description": "Seconds (0 allowed), or a string with a unit: '0s', '250ms', '2m'.",
    }),
]

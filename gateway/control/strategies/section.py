"""The base of every strategy's config section (``control.strategies.<name>``).

A section is a mapping with an ``enabled`` switch and the strategy's own parameters; a
bare boolean stands for ``{enabled: <bool>}`` so a short config reads well
(``peak_shaving: false``). Imports only pydantic: the config schema loads these models
without loading the strategies' code.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

Kw = Annotated[float, Field(ge=0)]
Pct = Annotated[float, Field(ge=0, le=100)]
Seconds = Annotated[float, Field(ge=0, le=86400)]


class StrategySection(BaseModel):
    """``enabled`` plus the strategy's parameters; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True

    @model_validator(mode="before")
    @classmethod
    def _bare_bool(cls, data: Any) -> Any:
        if isinstance(data, bool):
            return {"enabled": data}
        if not isinstance(data, dict | BaseModel):
            raise PydanticCustomError(
                "strategy_section", "expected true, false or a mapping of its settings "
                "({fields})", {"fields": ", ".join(cls.model_fields)})
        return data

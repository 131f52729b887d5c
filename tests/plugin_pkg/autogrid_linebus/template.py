"""linebus templates: each standard point names the device register that carries it."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from drivers.template_base import StrictTemplatePart, TemplateBase, nature_problems


class LineBusPoint(StrictTemplatePart):
    reg: str  # the register name on the device
    scale: float = 1.0
    access: Literal["r", "rw"] = "r"


class LineBusTemplate(TemplateBase):
    protocol: Literal["linebus"]
    points: dict[str, LineBusPoint]

    @model_validator(mode="after")
    def _points_of_nature(self) -> LineBusTemplate:
        problems = nature_problems(self.nature, {
            n: "access is 'rw'" if p.access == "rw" else None for n, p in self.points.items()})
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def writable(self) -> list[str]:
        return [n for n, p in self.points.items() if p.access == "rw"]

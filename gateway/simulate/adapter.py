"""The site controller (gateway.control.controller) in the simulate harness."""

from __future__ import annotations

from gateway.config.models import SiteConfig
from gateway.simulate.harness import Controller, ControllerFactory


def site_controller_factory() -> tuple[ControllerFactory, str] | None:
    """A factory of the real site controller, or None when this tree has none."""
    try:
        from gateway.control.controller import Controller as SiteController
    except ImportError:
        return None

    def make(cfg: SiteConfig) -> Controller:
        # without a control: section the controller runs its default strategies
        return SiteController(cfg)

    return make, "site controller (gateway.control.controller)"

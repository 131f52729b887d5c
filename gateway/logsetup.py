"""Logging: journald-friendly under systemd, human-readable on a terminal."""

from __future__ import annotations

import logging
import os
import sys

from gateway.config.models import Logging as LoggingConfig

# sd-daemon(3) priority prefixes, read by journald from stderr/stdout lines.
_SD_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _SD_PRIORITY.get(record.levelno, 6)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def under_journald() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM"))


def setup_logging(cfg: LoggingConfig | None = None, verbose: bool = False) -> None:
    cfg = cfg or LoggingConfig()
    handler = logging.StreamHandler(sys.stderr)
    if under_journald():
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                                               "%H:%M:%S"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else cfg.level.upper())
    for name, level in cfg.modules.items():
        logging.getLogger(name).setLevel(level.upper())
    # pymodbus logs every transport hiccup at error level; the poller reports device state.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL if not verbose else logging.DEBUG)

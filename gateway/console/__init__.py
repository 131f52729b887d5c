"""`autogrid console`: the operator's terminal UI (urwid) on the daemon's local API.

Modules: app (frame, keys, dialogs), bridge (ApiClient in urwid's asyncio loop), data (what
the console knows), caps (which API command serves which screen), theme, widgets,
screens/ (one module per screen), policy (roles and tokens, read by the daemon).
This package imports urwid only in the UI modules, so the daemon can use ``policy`` alone.
"""

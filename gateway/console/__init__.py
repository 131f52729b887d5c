"""`autogrid console`: the operator's terminal UI (urwid) on the daemon's local API.

Modules: app (frame, keys, dialogs), bridge (ApiClient in urwid's asyncio loop), data (what
the console knows), caps (which API command serves which screen), theme, widgets,
screens/ (one module per screen). A pure client: roles, tokens and the history it shows
are the API's (gateway.apipolicy, gateway.apihistory).
"""

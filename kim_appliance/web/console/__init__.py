"""The web console: one page for a developer testing against the appliance.

It shows the endpoints with ready-to-copy mail client settings, the participants and their
cards, the mailboxes per Fachdienst (outer headers only), the relay queues, the Konnektor's
fault switches (with toggles) and the VZD entries. The appliance starts it with
``await nursery.start(partial(serve_console, ConsoleState(...), bind=..., port=...))``.
It must never decrypt a message, serve anything outside its own files, or accept a state
change that a web page of another origin could have sent (see :mod:`.guard`).
"""

from kim_appliance.web.console.app import DEFAULT_PORT, STATIC_DIR, console_app, serve_console
from kim_appliance.web.console.guard import ConsoleGuard
from kim_appliance.web.console.state import ConsoleState, status

__all__ = [
    "DEFAULT_PORT",
    "STATIC_DIR",
    "ConsoleGuard",
    "ConsoleState",
    "console_app",
    "serve_console",
    "status",
]

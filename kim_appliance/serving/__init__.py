"""Serving plumbing below every component: the connection guard, the supervisor, HTTP listeners.

Everything that accepts connections goes through here (DESIGN.md: fault isolation by
construction, named limits on every listener). It knows nothing of KIM, of the components
above it, or of any protocol's content.
"""

from kim_appliance.serving.guard import (
    NETWORK_ERRORS,
    ConnectionBudget,
    Farewells,
    ListenerGuard,
    ListenerLimits,
    peer_of,
    raise_nofile_limit,
    serve_guarded,
)
from kim_appliance.serving.supervisor import Supervisor

__all__ = [
    "NETWORK_ERRORS",
    "ConnectionBudget",
    "Farewells",
    "ListenerGuard",
    "ListenerLimits",
    "Supervisor",
    "peer_of",
    "raise_nofile_limit",
    "serve_guarded",
]

"""In-process adapters of the Clientmodul's ports: this appliance's own Konnektor and VZD objects
behind :class:`~kim_appliance.clientmodul.ports.KonnektorPort` and
:class:`~kim_appliance.clientmodul.ports.DirectoryPort`.

This is the one place where the Clientmodul's ports meet the Konnektor's and the directory's
classes (``clientmodul/`` imports neither); the network adapters (SOAP, LDAP) live in
:mod:`kim_appliance.clientmodul.network`. An adapter only translates: types, and the
components' errors into the ports' (gematik codes kept). It must never decide a result itself.
:class:`StoreTraceSink` connects the observer (message traces) to the store the same way.
"""

from kim_appliance.adapters.directory import InProcessDirectory
from kim_appliance.adapters.konnektor import InProcessKonnektor
from kim_appliance.adapters.trace import StoreTraceSink

__all__ = ["InProcessDirectory", "InProcessKonnektor", "StoreTraceSink"]

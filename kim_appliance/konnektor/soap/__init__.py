"""The Konnektor's SOAP services over HTTPS for outside callers (issue 4, item 3).

:func:`serve_konnektor` serves ``connector.sds``, the six SOAP services of gematik's WSDLs
(:mod:`.services` names the versions), the WSDL files and the fault admin API; the SOAP work
itself is :class:`SoapDispatcher`, which maps XML onto the in-process
:class:`~kim_appliance.konnektor.Konnektor`. This package never holds a card key and never
decides a Konnektor result: it only translates between XML and the facade.
"""

from kim_appliance.konnektor.soap.admin import AdminRequestError, apply_faults
from kim_appliance.konnektor.soap.handlers import OPERATIONS, SoapDispatcher, SoapReply
from kim_appliance.konnektor.soap.server import KonnektorAddress, serve_konnektor
from kim_appliance.konnektor.soap.services import (
    SERVICES,
    SERVICES_BY_NAME,
    WSDL_DIR,
    ServiceSpec,
    schema_for,
)

__all__ = [
    "OPERATIONS",
    "SERVICES",
    "SERVICES_BY_NAME",
    "WSDL_DIR",
    "AdminRequestError",
    "KonnektorAddress",
    "ServiceSpec",
    "SoapDispatcher",
    "SoapReply",
    "apply_faults",
    "schema_for",
    "serve_konnektor",
]

"""The network adapters of the Clientmodul's ports: SOAP to a Konnektor (:mod:`.konnektor`,
with :mod:`.sds`, :mod:`.https`, :mod:`.konnektor_messages`) and LDAP to a VZD
(:mod:`.directory`). They import only the ports, the protocols, cms and pki: they run against
any Konnektor and VZD, this appliance's own or a practice's. This package only re-exports."""

from kim_appliance.clientmodul.network.directory import LdapDirectory, LdapSettings
from kim_appliance.clientmodul.network.konnektor import KonnektorSettings, SoapKonnektor

__all__ = ["KonnektorSettings", "LdapDirectory", "LdapSettings", "SoapKonnektor"]

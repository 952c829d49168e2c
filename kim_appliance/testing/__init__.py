r"""kim_appliance.testing: the whole KIM appliance inside your tests, on free ports, for CI.

Once kim-appliance is installed, pytest loads this plugin by itself. A test file, as it is::

    from email import message_from_bytes

    def test_arztbrief_arrives(kim_appliance):
        weber = kim_appliance.participant("praxis.weber")
        klein = kim_appliance.participant("zahnarzt.klein")
        mail = f"From: {weber.address}\r\nTo: {klein.address}\r\nSubject: Befund\r\n\r\nHallo\r\n"
        with kim_appliance.smtp(weber) as smtp:  # the Clientmodul signs and encrypts
            smtp.sendmail(weber.address, [klein.address], mail)
        pop = kim_appliance.pop3(klein)  # ... and decrypts and verifies
        _, lines, _ = pop.retr(pop.stat()[0])
        pop.quit()
        assert message_from_bytes(b"\r\n".join(lines))["X-KIM-DecryptionResult"] == "00"

Fixtures: ``kim_appliance`` (one appliance for the whole session), ``kim_appliance_fresh`` (one
per test, with empty mailboxes; ``@pytest.mark.kim_config({...})`` merges config.toml
overrides), ``kim_template`` (the initialised data dir both are copied from; ``--kim-data-dir
DIR`` keeps it between runs). Each is a :class:`KimAppliance`: ``endpoints``, ``tls_ca``,
``clientmodul_smtp``/``_pop3``, ``fachdienste``, ``konnektor_sds``, ``ldap``, ``base_dn``, the
demo ``participants``, and ``smtp()``, ``pop3()``, ``ssl_context()``, ``fault()``.
Without pytest: ``with KimApplianceThread() as app:``. In trio code:
``async with running_appliance(template=...) as app:``.

This package only starts and describes appliances for tests; it must never weaken what the
appliance checks, and importing it (the plugin is imported by every pytest run) must stay
cheap: the appliance's modules are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kim_appliance.testing._appliance import (
        ApplianceStartError as ApplianceStartError,
    )
    from kim_appliance.testing._appliance import (
        FachdienstEndpoints as FachdienstEndpoints,
    )
    from kim_appliance.testing._appliance import (
        FaultSwitchError as FaultSwitchError,
    )
    from kim_appliance.testing._appliance import (
        KimAppliance as KimAppliance,
    )
    from kim_appliance.testing._appliance import (
        Participant as Participant,
    )
    from kim_appliance.testing._appliance import (
        copy_template as copy_template,
    )
    from kim_appliance.testing._appliance import (
        fast_hash as fast_hash,
    )
    from kim_appliance.testing._appliance import (
        make_template as make_template,
    )
    from kim_appliance.testing._appliance import (
        running_appliance as running_appliance,
    )
    from kim_appliance.testing._appliance import (
        serve_appliance as serve_appliance,
    )
    from kim_appliance.testing._appliance import (
        switch_faults as switch_faults,
    )
    from kim_appliance.testing._appliance import (
        write_config as write_config,
    )
    from kim_appliance.testing._thread import KimApplianceThread as KimApplianceThread

_LAZY = {
    "ApplianceStartError": "_appliance",
    "FachdienstEndpoints": "_appliance",
    "FaultSwitchError": "_appliance",
    "KimAppliance": "_appliance",
    "Participant": "_appliance",
    "copy_template": "_appliance",
    "fast_hash": "_appliance",
    "make_template": "_appliance",
    "running_appliance": "_appliance",
    "serve_appliance": "_appliance",
    "switch_faults": "_appliance",
    "write_config": "_appliance",
    "KimApplianceThread": "_thread",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])

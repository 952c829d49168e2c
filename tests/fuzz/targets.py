"""The registry of fuzz targets: every parser of issue 11, by name."""

from __future__ import annotations

from .target import Target
from .targets_cms import TARGETS as CMS_TARGETS
from .targets_mail import TARGETS as MAIL_TARGETS
from .targets_protocols import TARGETS as PROTOCOL_TARGETS
from .targets_services import TARGETS as SERVICE_TARGETS

TARGETS: dict[str, Target] = {
    t.name: t for t in [*PROTOCOL_TARGETS, *CMS_TARGETS, *MAIL_TARGETS, *SERVICE_TARGETS]
}

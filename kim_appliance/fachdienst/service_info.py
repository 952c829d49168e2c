"""``I_ServiceInformation`` 1.0 (digest §3.4): what a Clientmodul learns before it registers.

``GET /ServiceInformation/v1.0/serviceinfo`` needs no authentication and answers the KIM
version, the password policy of the Account Manager (as a Java-compatible regex plus display
text, digest §3.2), the JWT lifetime (300-21600 s) and whether registration needs a
referenceID and an initial password. The policy lives here so that the Account Manager checks
passwords against exactly what this service announces. This module must never reveal
anything about accounts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.pki.jwt import DEFAULT_JWT_EXPIRATION_SECONDS
from kim_appliance.web.errors import JsonUtf8Response

BASE_PATH = "/ServiceInformation/v1.0"

#: the KIM version the appliance's Fachdienst implements (";"-separated list allowed, §3.4)
KIM_SERVICE_VERSION = "1.5.5"

#: the password policy of gematik's ServiceInformation example (digest §3.2): 12-256
#: characters with a digit, a lower-case and an upper-case letter and a special character
PASSWORD_POLICY_REGEX = (
    r"^(?=.*[0-9])(?=.*[a-z])(?=.*[A-Z])(?=.*[*.!@#$%^&(){}\[\]:;'<>,?/~_+\-=|\\]).{12,256}$"
)
PASSWORD_POLICY_DISPLAY = (
    "At least one number [0-9]\n"
    "At least one lowercase letter [a-z]\n"
    "At least one capital letter [A-Z]\n"
    "At least one special character [*.!@#$%^&(){}[]:;'<>,?/~_+-=|\\]\n"
    "Minimum length 12 characters\n"
    "Maximum length 256 characters."
)
_PASSWORD_POLICY = re.compile(PASSWORD_POLICY_REGEX, re.DOTALL)


def password_meets_policy(password: str) -> bool:
    """True if ``password`` satisfies :data:`PASSWORD_POLICY_REGEX` (Account Manager 420)."""
    return _PASSWORD_POLICY.fullmatch(password) is not None


@dataclass(frozen=True)
class ServiceInformation:
    """The ServiceInformation object (ServiceInformation.yaml 1.0.3)."""

    kim_service_version: str = KIM_SERVICE_VERSION
    jwt_expiration: int = DEFAULT_JWT_EXPIRATION_SECONDS
    reference_id_required: bool = True
    initial_password_required: bool = True

    def __post_init__(self) -> None:
        if not 300 <= self.jwt_expiration <= 21600:
            raise ValueError(
                f"jwtExpiration: {self.jwt_expiration} s is outside 300-21600 (digest §3.4)"
            )

    def to_json(self) -> dict[str, object]:
        return {
            "kimServiceVersion": self.kim_service_version,
            "passwordPolicyRegEx": PASSWORD_POLICY_REGEX,
            "passwordPolicyDisplay": PASSWORD_POLICY_DISPLAY,
            "jwtExpiration": self.jwt_expiration,
            "referenceIdRequired": self.reference_id_required,
            "initialPasswordRequired": self.initial_password_required,
        }


def service_info_routes(
    fd: Fachdienst, *, info: ServiceInformation | None = None
) -> list[BaseRoute]:
    """The ServiceInformation routes of ``fd``, mounted at :data:`BASE_PATH`."""
    body = (info or ServiceInformation()).to_json()

    async def get_service_information(request: Request) -> Response:
        return JsonUtf8Response(body)

    return [
        Mount(
            BASE_PATH,
            routes=[Route("/serviceinfo", get_service_information, methods=["GET"])],
            name=f"serviceinfo:{fd.domain}",
        )
    ]

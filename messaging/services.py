"""Messaging writes. For now: storing what the local mail catcher receives."""

from email import policy
from email.parser import BytesParser

from messaging.models import CapturedEmail


def captured_email_store(
    *, peer: str, envelope_from: str, envelope_to: list[str], raw: bytes
) -> CapturedEmail:
    headers = BytesParser(policy=policy.default).parsebytes(raw, headersonly=True)
    subject = str(headers.get("Subject", ""))[:998]
    return CapturedEmail.objects.create(
        peer=peer[:100],
        envelope_from=envelope_from[:254],
        envelope_to=envelope_to,
        subject=subject,
        raw=raw,
    )

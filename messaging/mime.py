"""The MIME message is built once per message; each recipient only gets its own To and Message-ID.

Prepending two header lines to prebuilt bytes costs microseconds, where building and serializing
a MIME tree costs about a millisecond: at thousands of emails a second, that is the difference.
"""

from email.utils import formataddr

from django.core.mail import EmailMultiAlternatives

from messaging.models import Message


def message_template(message: Message) -> bytes:
    """The message's bytes without To and Message-ID (CRLF line ends, ready for DATA)."""
    sender = message.sender
    email = EmailMultiAlternatives(
        subject=message.subject,
        body=message.text,
        from_email=formataddr((message.from_name or sender.from_name, sender.from_address)),
        reply_to=[message.reply_to] if message.reply_to else None,
        headers={"X-UMS-Msgid": message.msgid},
    )
    if message.html:
        email.attach_alternative(message.html, "text/html")
    for material in message.materials.all():
        with material.file.open("rb") as handle:
            email.attach(material.name, handle.read(), material.content_type)
    mime = email.message()
    del mime["Message-ID"]
    return mime.as_bytes(linesep="\r\n")


def stamp(template: bytes, *, to: str, message_id: str) -> bytes:
    return b"".join(
        (b"To: ", to.encode(), b"\r\nMessage-ID: ", message_id.encode(), b"\r\n", template)
    )


def message_id_for(message: Message, delivery_id: int) -> str:
    domain = message.sender.from_address.rpartition("@")[2] or "ums.invalid"
    return f"<{message.msgid}.{delivery_id}@{domain}>"

"""The MIME message is built once per message; each recipient only gets its own To and Message-ID.

Prepending two header lines to prebuilt bytes costs microseconds, where building and serializing
a MIME tree costs about a millisecond: at thousands of emails a second, that is the difference.

Two things add to that per recipient, and only when the message needs them:

- a personalized message (`Message.personalized`: `{{userid}}` / `{{email}}` in its subject,
  HTML or text) is built for each recipient from `templating.personalized_parts`; its
  attachments are still read once per batch;
- a marketing channel's mail carries the RFC 8058 `List-Unsubscribe` headers, signed for each
  recipient (`unsubscribe.unsubscribe_headers`, no query), prepended like To and Message-ID.
"""

from email.utils import formataddr

from django.core.mail import EmailMultiAlternatives

from messaging.models import Message
from messaging.templating import personalized_parts
from messaging.unsubscribe import unsubscribe_headers

Attachment = tuple[str, bytes, str]


def message_attachments(message: Message) -> list[Attachment]:
    """The message's materials as (name, content, type), read once."""
    found = []
    for material in message.materials.all():
        with material.file.open("rb") as handle:
            found.append((material.name, handle.read(), material.content_type))
    return found


def message_template(
    message: Message,
    *,
    parts: tuple[str, str, str] | None = None,
    attachments: list[Attachment] | None = None,
) -> bytes:
    """The message's bytes without To and Message-ID (CRLF line ends, ready for DATA).

    `parts` replaces the message's (subject, html, text), e.g. filled for one recipient;
    `attachments` are the materials already read (read here when not given).
    """
    sender = message.sender
    subject, html, text = parts or (message.subject, message.html, message.text)
    email = EmailMultiAlternatives(
        subject=subject,
        body=text,
        from_email=formataddr((message.from_name or sender.from_name, sender.from_address)),
        reply_to=[message.reply_to] if message.reply_to else None,
        headers={"X-UMS-Msgid": message.msgid},
    )
    if html:
        email.attach_alternative(html, "text/html")
    if attachments is None:
        attachments = message_attachments(message)
    for name, content, content_type in attachments:
        email.attach(name, content, content_type)
    mime = email.message()
    del mime["Message-ID"]
    return mime.as_bytes(linesep="\r\n")


def stamp(template: bytes, *, to: str, message_id: str, headers: bytes = b"") -> bytes:
    return b"".join(
        (b"To: ", to.encode(), b"\r\nMessage-ID: ", message_id.encode(), b"\r\n", headers, template)
    )


def message_id_for(message: Message, delivery_id: int) -> str:
    domain = message.sender.from_address.rpartition("@")[2] or "ums.invalid"
    return f"<{message.msgid}.{delivery_id}@{domain}>"


class Composer:
    """The bytes of each recipient's email, for one batch of one message and sender.

    Built once per batch (with `message.sender` the sender of the batch, and `message.channel`
    loaded): a plain message's template is built here once and only stamped per recipient.
    """

    def __init__(self, message: Message) -> None:
        self.message = message
        self.marketing = message.channel.is_marketing
        if message.personalized:
            self.attachments = message_attachments(message)
            self.template = b""
        else:
            self.attachments = []
            self.template = message_template(message)

    def email(self, *, userid: str, email: str, message_id: str) -> bytes:
        message = self.message
        template = self.template
        if message.personalized:
            parts = personalized_parts(message=message, userid=userid, email=email)
            template = message_template(message, parts=parts, attachments=self.attachments)
        headers = b""
        if self.marketing:
            extra = unsubscribe_headers(
                channel_id=message.channel_id, is_marketing=True, email=email
            )
            headers = "".join(f"{name}: {value}\r\n" for name, value in extra.items()).encode()
        return stamp(template, to=email, message_id=message_id, headers=headers)

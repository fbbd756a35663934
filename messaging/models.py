"""Messaging models. For now: the mail caught by the local mail catcher (development, demos)."""

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from django.db import models
from django.utils.translation import gettext_lazy as _


class CapturedEmail(models.Model):
    """An email received by the local mail catcher (`manage.py mailcatcher`)."""

    received_at = models.DateTimeField(_("received"), auto_now_add=True, db_index=True)
    peer = models.CharField(_("client"), max_length=100, blank=True)
    envelope_from = models.CharField(_("envelope from"), max_length=254, blank=True)
    envelope_to = models.JSONField(_("envelope recipients"), default=list)
    subject = models.CharField(_("subject"), max_length=998, blank=True)
    raw = models.BinaryField(_("raw message"))

    class Meta:
        verbose_name = _("captured email")
        verbose_name_plural = _("captured emails (mail catcher)")
        ordering = ["-received_at", "-pk"]

    def __str__(self) -> str:
        return self.subject or str(_("(no subject)"))

    def parsed(self) -> EmailMessage:
        return BytesParser(policy=policy.default).parsebytes(bytes(self.raw))

    def body(self, subtype: str) -> str:
        part = self.parsed().get_body(preferencelist=(subtype,))
        return part.get_content() if part is not None else ""

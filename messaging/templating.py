"""Message templates: `{{name}}` placeholders filled with values, and nothing else.

A template is data, not code: a placeholder is a name of letters, digits and underscores
between double braces (white space inside the braces is allowed), and there are no conditions,
loops or filters. Values are HTML-escaped in the body. The subject is a mail header: its values
are not escaped, but line breaks and other control characters are removed from them.

A missing value is an error naming it (API code 4004, `template_para.<name>`), never an empty
string; extra values are ignored; a value is a string or a number.

Per-recipient variables
-----------------------
`{{userid}}` and `{{email}}` are filled for each recipient by the delivery pipeline, not by
`template_render`: it leaves them in place, always written `{{userid}}` / `{{email}}` (white
space inside the braces dropped) in the subject, the HTML and the plain text derived from it,
and says so with `RenderedTemplate.personalized`, stored on `Message.personalized`.

The contract with the delivery pipeline
---------------------------------------
For a message with `personalized=True`, each recipient's email is built from

    subject, html, text = personalized_parts(message=message, userid=d.userid, email=d.email)

which is `personalize()` over `message.subject` and `message.text` (html=False) and
`message.html` (html=True). `personalize` is one pass of a precompiled regular expression over
the text, with the two values escaped once per call; a text without `{{` is returned as it is.
The MIME message of a personalized message differs per recipient, so
`messaging.mime.message_template` is built from these parts for each recipient (or each
distinct (userid, email) pair) instead of once per message; its attachments can still be read
once per batch. A delivery to a raw address (`aud_email`) has an empty userid: `{{userid}}`
becomes the empty string. A message with `personalized=False` is sent exactly as before.
"""

import math
import re
from dataclasses import dataclass
from typing import Any, Protocol

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.translation import gettext as _

from messaging.models import MessageTemplate

INVALID_PARAMETER = 4004
TEMPLATE_UNKNOWN = 1015031
TEMPLATE_UNUSABLE = 1015032
SUBJECT_MAX = 998
RECIPIENT_VARIABLES = ("userid", "email")

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
_RECIPIENT_TOKEN = re.compile(r"\{\{(userid|email)\}\}")
# C0 and C1 control characters (CR, LF and tab among them), DEL, and the Unicode line and
# paragraph separators: none belongs in a header.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# `{` too: a value can never form a placeholder that a later pass would fill.
_HTML_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;", "{": "&#123;"}
)
_SHOWN_SNIPPET = 40
# A `{{` outside the placeholders (masked by NULs), up to its `}}` when one follows closely.
_STRAY = re.compile(r"\{\{(?:[^\x00{}]{0,60}?\}\})?")


class TemplateError(Exception):
    """A template that cannot be used, or values that do not fit it, with the API's code.

    `code` is 4004 (`message` names the field: `template_para.<name>: …`), 1015031 (no such
    template) or 1015032 (disabled, or another channel's); `status` is the HTTP status. The
    attributes are those of messaging.services.SendRefused, which the send service raises.
    """

    def __init__(self, *, code: int, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class RenderedTemplate:
    subject: str
    html: str
    # The subject or HTML still holds {{userid}} / {{email}}: the pipeline fills them.
    personalized: bool


class HasContent(Protocol):
    subject: str
    html: str


# --- reading placeholders ----------------------------------------------------------------------


def template_variables(text: str) -> list[str]:
    """The placeholders' names in `text`, each once, in order of first appearance."""
    return list(dict.fromkeys(match[1] for match in PLACEHOLDER.finditer(text)))


def template_all_variables(*, subject: str, html: str) -> list[str]:
    """The names used by a template: the subject's first, then the body's."""
    return list(dict.fromkeys(template_variables(subject) + template_variables(html)))


def required_variables(variables: list[str]) -> list[str]:
    """The names a caller gives values for: all but the per-recipient ones."""
    return [name for name in variables if name not in RECIPIENT_VARIABLES]


def has_recipient_variables(*texts: str) -> bool:
    return any(name in RECIPIENT_VARIABLES for text in texts for name in template_variables(text))


def stray_braces(text: str) -> list[str]:
    """Snippets starting with a `{{` that is not a placeholder, as a person wrote them.

    `{{ first name }}` or `{{name|upper}}` would otherwise reach the recipients as they are. A
    lone `}}` is left alone: style sheets end nested rules with it.
    """
    masked = PLACEHOLDER.sub(lambda match: "\x00" * len(match[0]), text)
    found = []
    for match in _STRAY.finditer(masked):
        snippet = text[match.start() : match.end()]
        if len(snippet) > _SHOWN_SNIPPET:
            snippet = snippet[:_SHOWN_SNIPPET] + "…"
        found.append(snippet)
    return list(dict.fromkeys(found))


def template_problems(*, subject: str, html: str) -> dict[str, str]:
    """What keeps a template from being saved, by field."""
    problems: dict[str, str] = {}
    if "\r" in subject or "\n" in subject:
        problems["subject"] = _("Line breaks are not allowed in the subject.")
    for field, text in (("subject", subject), ("html", html)):
        stray = stray_braces(text)
        if stray and field not in problems:
            problems[field] = _(
                "%(snippets)s is not a placeholder. Write a placeholder as {{name}}: letters, "
                "digits and underscores only, with no filters or conditions."
            ) % {"snippets": ", ".join(stray)}
    return problems


# --- rendering ---------------------------------------------------------------------------------


def _html_value(value: str) -> str:
    return value.translate(_HTML_ESCAPES)


def _header_value(value: str) -> str:
    return _CONTROL.sub("", value)


def _scalar(name: str, value: object) -> str:
    """A value as text: a string, or a finite number (not a boolean, a list or an object)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(value)
    raise TemplateError(
        code=INVALID_PARAMETER,
        message=_("template_para.%(name)s: must be a string or a number") % {"name": name},
    )


def _values(variables: list[str], para: object) -> dict[str, str]:
    if para is None:
        para = {}
    if not isinstance(para, dict):
        raise TemplateError(code=INVALID_PARAMETER, message=_("template_para: must be an object"))
    values: dict[str, str] = {}
    for name in required_variables(variables):
        if name not in para or para[name] is None:
            raise TemplateError(
                code=INVALID_PARAMETER,
                message=_("template_para.%(name)s: required by the template") % {"name": name},
            )
        values[name] = _scalar(name, para[name])
    return values


def _fill(text: str, values: dict[str, str], escape: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match[1]
        if name in RECIPIENT_VARIABLES:
            return "{{" + name + "}}"
        return escape(values[name])

    return PLACEHOLDER.sub(replace, text)


def template_render(*, template: HasContent, para: dict[str, Any] | None) -> RenderedTemplate:
    """The template's subject and HTML with `para`'s values filled in.

    Raises TemplateError (4004) naming the first missing or unusable value, or when the
    filled subject exceeds 998 characters. `{{userid}}` and `{{email}}` stay in place.
    """
    variables = template_all_variables(subject=template.subject, html=template.html)
    values = _values(variables, para)
    subject = _fill(template.subject, values, _header_value)
    if len(subject) > SUBJECT_MAX:
        raise TemplateError(
            code=INVALID_PARAMETER,
            message=_("template_para: the subject would be longer than %(max)d characters")
            % {"max": SUBJECT_MAX},
        )
    return RenderedTemplate(
        subject=subject,
        html=_fill(template.html, values, _html_value),
        personalized=any(name in RECIPIENT_VARIABLES for name in variables),
    )


# --- per recipient: what the pipeline calls ----------------------------------------------------


def personalize(*, text: str, userid: str, email: str, html: bool) -> str:
    """`text` with `{{userid}}` and `{{email}}` filled for one recipient.

    `html=True` for the HTML body (values escaped), False for the subject and the plain-text
    part (control characters removed). One regular-expression pass; see the module's contract.
    """
    if "{{" not in text:
        return text
    clean = _html_value if html else _header_value
    values = {"userid": clean(userid), "email": clean(email)}
    return _RECIPIENT_TOKEN.sub(lambda match: values[match[1]], text)


def personalized_parts(*, message: Any, userid: str, email: str) -> tuple[str, str, str]:
    """(subject, html, text) of a personalized message for one recipient."""
    return (
        personalize(text=message.subject, userid=userid, email=email, html=False),
        personalize(text=message.html, userid=userid, email=email, html=True),
        personalize(text=message.text, userid=userid, email=email, html=False),
    )


# --- using a template --------------------------------------------------------------------------


def template_for_message(*, channel: Any, template_id: int) -> MessageTemplate:
    """The template a send of `channel` names: 1015031 unknown, 1015032 disabled or not the
    channel's (a template without a channel serves every channel)."""
    template = MessageTemplate.objects.filter(pk=template_id).first()
    if template is None:
        raise TemplateError(
            code=TEMPLATE_UNKNOWN,
            message=_("template_id: no template %(id)s") % {"id": template_id},
        )
    if not template.is_enabled:
        raise TemplateError(
            code=TEMPLATE_UNUSABLE,
            message=_("template_id: template %(id)s is disabled") % {"id": template_id},
        )
    if template.channel_id is not None and template.channel_id != channel.pk:
        raise TemplateError(
            code=TEMPLATE_UNUSABLE,
            message=_("template_id: template %(id)s belongs to another channel")
            % {"id": template_id},
        )
    return template


@dataclass(frozen=True)
class TemplatePreview:
    subject: str
    html: str
    variables: list[str]
    problems: dict[str, str]


def template_preview(
    *, subject: str, html: str, samples: dict[str, str], userid: str = "", email: str = ""
) -> TemplatePreview:
    """The template as a recipient would see it, through the same renderer as a send.

    A variable without a sample value shows as its placeholder; a sample userid or email fills
    the per-recipient variables as the pipeline will.
    """
    subject = subject.strip()
    variables = template_all_variables(subject=subject, html=html)
    para = {name: samples.get(name) or "{{" + name + "}}" for name in required_variables(variables)}
    rendered = template_render(
        template=MessageTemplate(subject=subject.replace("\r", "").replace("\n", " "), html=html),
        para=para,
    )
    shown_subject, shown_html = rendered.subject, rendered.html
    if userid or email:
        shown_subject = personalize(text=shown_subject, userid=userid, email=email, html=False)
        shown_html = personalize(text=shown_html, userid=userid, email=email, html=True)
    return TemplatePreview(
        subject=shown_subject,
        html=shown_html,
        variables=variables,
        problems=template_problems(subject=subject, html=html),
    )


@transaction.atomic
def message_template_save(
    *, template: MessageTemplate, user: AbstractBaseUser | None = None
) -> MessageTemplate:
    """Create or update a template; its `variables` follow its subject and HTML.

    Raises ValidationError (by field) for a subject with line breaks or braces that are not a
    placeholder.
    """
    template.subject = template.subject.strip()
    problems = template_problems(subject=template.subject, html=template.html)
    if problems:
        raise ValidationError(problems)
    template.variables = template_all_variables(subject=template.subject, html=template.html)
    if template.pk is None and template.created_by_id is None and user is not None:
        template.created_by = user
    template.full_clean()
    template.save()
    return template

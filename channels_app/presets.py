"""Well-known SMTP providers: host, port and encryption filled in by the sender form."""

from typing import TypedDict

from django.utils.translation import gettext_lazy as _


class Preset(TypedDict):
    key: str
    label: str
    host: str
    port: int
    encryption: str


PRESETS: list[Preset] = [
    {"key": "qq", "label": _("QQ Mail"), "host": "smtp.qq.com", "port": 465, "encryption": "ssl"},
    {
        "key": "exmail",
        "label": _("Tencent Exmail"),
        "host": "smtp.exmail.qq.com",
        "port": 465,
        "encryption": "ssl",
    },
    {
        "key": "163",
        "label": _("NetEase 163"),
        "host": "smtp.163.com",
        "port": 465,
        "encryption": "ssl",
    },
    {
        "key": "126",
        "label": _("NetEase 126"),
        "host": "smtp.126.com",
        "port": 465,
        "encryption": "ssl",
    },
    {
        "key": "sendcloud",
        "label": _("SendCloud"),
        "host": "smtp.sendcloud.net",
        "port": 465,
        "encryption": "ssl",
    },
    {
        "key": "aliyun",
        "label": _("Aliyun DirectMail"),
        "host": "smtpdm.aliyun.com",
        "port": 465,
        "encryption": "ssl",
    },
    {
        "key": "gmail",
        "label": _("Gmail"),
        "host": "smtp.gmail.com",
        "port": 465,
        "encryption": "ssl",
    },
    {
        "key": "outlook",
        "label": _("Outlook / Office 365 (needs a port exception)"),
        "host": "smtp.office365.com",
        "port": 587,
        "encryption": "starttls",
    },
]

"""The dashboard above the console's app list: `{% ums_dashboard as dashboard %}`.

The numbers come from ums.dashboard (cached, the same for everyone); the labels, links and the
chart's data are made here, per request, in the user's language.
"""

from dataclasses import dataclass
from typing import Any

from django import template
from django.urls import reverse
from django.utils.formats import date_format
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from channels_app.models import EmailSender
from messaging.models import Delivery, Message
from ums.dashboard import (
    STATUSES,
    Counts,
    SenderHealth,
    SendStats,
    dashboard_for,
)

register = template.Library()

STATUS_LABELS = {
    "sent": Delivery.Status.SENT.label,
    "failed": Delivery.Status.FAILED.label,
    "invalid": Delivery.Status.INVALID.label,
    "cancelled": Delivery.Status.CANCELLED.label,
    "pending": Delivery.Status.PENDING.label,
}
FAILURE_KINDS = {
    "auth": _("login refused"),
    "certificate": _("certificate not trusted"),
    "tls": _("TLS failed"),
    "network_guard": _("address not allowed"),
    "timeout": _("timed out"),
    "connection": _("connection failed"),
    "transient": _("temporary failure"),
    "permanent": _("refused by the server"),
}


@dataclass(frozen=True)
class SenderRow:
    sender: SenderHealth
    url: str  # empty when the user may not open the sender's page
    health_label: str
    error_kind_label: str


@dataclass(frozen=True)
class CountsRow:
    name: str
    counts: Counts
    bar: str  # the counts in STATUSES order, for the bar that the script draws


@register.simple_tag(takes_context=True)
def ums_dashboard(context: template.Context) -> dict[str, Any]:
    user = context["request"].user
    data = dashboard_for(user=user)
    view: dict[str, Any] = {
        "has_panels": data.has_panels,
        "statuses": [(s, STATUS_LABELS[s]) for s in STATUSES],
        "sends": data.sends,
        "senders": None,
        "queue": data.queue,
    }
    if data.sends is not None:
        view["tables"] = send_tables(data.sends)
        view["daily"] = data.sends.daily_totals()
        view["chart"] = chart_data(data.sends)
    if data.senders is not None:
        view["senders"] = data.senders
        view["sender_rows"] = [sender_row(s, user) for s in data.senders.senders]
        if user.has_perm("channels_app.view_emailsender"):
            view["senders_url"] = reverse("admin:channels_app_emailsender_changelist")
    if data.queue is not None:
        view["waiting_deliveries"] = [
            (Delivery.Status(s).label, n) for s, n in data.queue.deliveries.items()
        ]
        view["waiting_messages"] = [
            (Message.Status(s).label, n) for s, n in data.queue.messages.items()
        ]
    return view


def _row(name: str, counts: Counts) -> CountsRow:
    return CountsRow(
        name=name, counts=counts, bar=",".join(str(getattr(counts, s)) for s in STATUSES)
    )


def send_tables(stats: SendStats) -> list[dict[str, Any]]:
    """Today's and the period's recipients by channel, each with an all-channels total."""
    return [
        {
            "title": title,
            "rows": [_row(c.name, getattr(c, attr)) for c in stats.channels],
            "total": _row(gettext("All channels"), getattr(stats, attr)),
        }
        for title, attr in ((_("Today"), "today"), (_("Last 30 days"), "period"))
    ]


def chart_data(stats: SendStats) -> dict[str, Any]:
    """What the script needs to draw the daily chart, for json_script."""
    return {
        "statuses": [{"key": s, "label": str(STATUS_LABELS[s])} for s in STATUSES],
        "days": [day.isoformat() for day in stats.days],
        "dayLabels": [date_format(day, "MONTH_DAY_FORMAT") for day in stats.days],
        "axisLabels": [f"{day.month}/{day.day}" for day in stats.days],
        "channels": [
            {
                "name": c.name,
                "daily": {s: [getattr(counts, s) for counts in c.daily] for s in STATUSES},
            }
            for c in stats.channels
        ],
        "text": {
            "all": gettext("All channels"),
            "channel": gettext("Channel"),
            "title": gettext("Recipients per day by status"),
            "empty": gettext("No sends in this period."),
            "recipients": gettext("recipients"),
        },
    }


def sender_row(sender: SenderHealth, user: Any) -> SenderRow:
    may_open = user.has_perm("channels_app.view_emailsender") or user.has_perm(
        "channels_app.change_emailsender"
    )
    url = reverse("admin:channels_app_emailsender_change", args=[sender.sender_id])
    return SenderRow(
        sender=sender,
        url=url if may_open else "",
        health_label=str(EmailSender.Health(sender.health).label),
        error_kind_label=str(FAILURE_KINDS.get(sender.error_kind, sender.error_kind)),
    )

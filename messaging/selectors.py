"""Reads about messages: sendno lookups, and the send history's lists, progress and timelines.

The history must stay fast with millions of deliveries: counts come from the counters kept on
each message, recipients are found through the email and userid indexes, and a message's
deliveries are read in pages and chunks along the (message, id) index.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Max, Min, Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _

from channels_app.models import Channel
from messaging.models import Delivery, Message, SendnoKey

SENDNO_WINDOW = timedelta(hours=24)

# The groups of delivery statuses that the message's counters count.
STATUS_GROUPS: dict[str, tuple[str, ...]] = {
    "sent": (Delivery.Status.SENT,),
    "failed": (Delivery.Status.FAILED,),
    "invalid": (Delivery.Status.INVALID,),
    "cancelled": (Delivery.Status.CANCELLED,),
    "pending": (Delivery.Status.PENDING, Delivery.Status.SENDING, Delivery.Status.RETRYING),
}
DELIVERY_COLUMNS = (
    "id",
    "message",
    "userid",
    "email",
    "status",
    "attempts",
    "smtp_code",
    "smtp_reply",
    "smtp_message_id",
    "sent_at",
)


def sendno_message(*, channel: Channel, sendno: str) -> Message | None:
    """The channel's first message with this sendno in the last 24 hours, if any."""
    if not sendno:
        return None
    key = (
        SendnoKey.objects.filter(
            channel=channel, sendno=sendno, created_at__gte=timezone.now() - SENDNO_WINDOW
        )
        .select_related("message")
        .first()
    )
    return key.message if key else None


# --- finding messages -------------------------------------------------------------------------


def address_variants(term: str) -> list[str]:
    """The address as typed and as stored (bindings keep the local part, lowercase the domain)."""
    local, at, domain = term.rpartition("@")
    if not at:
        return [term]
    return list(dict.fromkeys([term, f"{local}@{domain.lower()}"]))


def recipient_message_ids(*, term: str) -> QuerySet:
    """The ids of the messages that went to this exact userid or email (a subquery)."""
    return Delivery.objects.filter(Q(userid=term) | Q(email__in=address_variants(term))).values(
        "message_id"
    )


def messages_search(*, messages: QuerySet, term: str) -> QuerySet:
    """Messages by exact msgid or sendno, words of the subject, or a recipient's userid/email.

    The recipients are matched in a subquery, so a message that went to the person twice
    still appears once.
    """
    term = term.strip()
    if not term:
        return messages
    return messages.filter(
        Q(msgid=term)
        | Q(sendno=term)
        | Q(subject__icontains=term)
        | Q(pk__in=recipient_message_ids(term=term))
    )


# --- one message: progress and timeline -------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    total: int
    sent: int
    failed: int
    invalid: int
    cancelled: int
    pending: int

    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in ("total", *STATUS_GROUPS)}

    def percents(self) -> dict[str, float]:
        """Each group's share of the recipients, for the widths of a stacked bar."""
        return {
            name: round(100 * getattr(self, name) / self.total, 2) if self.total else 0.0
            for name in STATUS_GROUPS
        }

    @property
    def done_percent(self) -> int:
        """How much of the message is settled (everything but pending), rounded down."""
        return (100 * (self.total - self.pending) // self.total) if self.total else 0

    @property
    def title(self) -> str:
        return (
            _(
                "%(sent)d sent, %(failed)d failed, %(invalid)d invalid, %(cancelled)d cancelled, "
                "%(pending)d pending of %(total)d"
            )
            % self.counts()
        )


def message_progress(*, message: Message) -> Progress:
    """The message's counters (no deliveries are counted)."""
    return Progress(
        total=message.total,
        sent=message.sent,
        failed=message.failed,
        invalid=message.invalid,
        cancelled=message.cancelled,
        pending=message.pending,
    )


def message_is_finished(*, message: Message) -> bool:
    """Nothing more will change: done, or retracted with no email left in flight."""
    if message.status == Message.Status.DONE:
        return True
    return message.status == Message.Status.RETRACTED and message.pending == 0


@dataclass(frozen=True)
class TimelineEntry:
    key: str
    label: str
    at: datetime | None


def message_timeline(*, message: Message) -> list[TimelineEntry]:
    """What happened when: from the message's fields and one aggregate over its sent rows."""
    first = last = None
    if message.dispatched_at is not None:
        sent = Delivery.objects.filter(message=message, status=Delivery.Status.SENT).aggregate(
            first=Min("sent_at"), last=Max("sent_at")
        )
        first, last = sent["first"], sent["last"]
    retracted = message.status == Message.Status.RETRACTED
    return [
        TimelineEntry("created", _("Created"), message.created_at),
        TimelineEntry("scheduled", _("Scheduled for"), message.send_at),
        TimelineEntry("dispatched", _("Dispatched"), message.dispatched_at),
        TimelineEntry("first_sent", _("First delivery sent"), first),
        TimelineEntry("last_sent", _("Last delivery sent"), last),
        TimelineEntry(
            "finished", _("Retracted") if retracted else _("Finished"), message.finished_at
        ),
    ]


# --- one message: its deliveries --------------------------------------------------------------


def message_deliveries(*, message: Message, status: str = "", search: str = "") -> QuerySet:
    """A message's deliveries, optionally of one status group, or of one userid or email."""
    rows = Delivery.objects.filter(message=message).only(*DELIVERY_COLUMNS)
    if status in STATUS_GROUPS:
        rows = rows.filter(status__in=STATUS_GROUPS[status])
    search = search.strip()
    if search:
        rows = rows.filter(Q(userid=search) | Q(email__in=address_variants(search)))
    return rows


@dataclass(frozen=True)
class DeliveryPage:
    rows: list[Delivery]
    has_previous: bool
    has_next: bool

    @property
    def first_id(self) -> int | None:
        return self.rows[0].pk if self.rows else None

    @property
    def last_id(self) -> int | None:
        return self.rows[-1].pk if self.rows else None


def message_deliveries_page(
    *,
    message: Message,
    status: str = "",
    search: str = "",
    after: int | None = None,
    before: int | None = None,
    size: int = 100,
) -> DeliveryPage:
    """One page in id order, by keyset (after/before an id): every page costs the same."""
    rows = message_deliveries(message=message, status=status, search=search)
    if before is not None:
        found = list(rows.filter(id__lt=before).order_by("-id")[: size + 1])
        return DeliveryPage(found[:size][::-1], has_previous=len(found) > size, has_next=True)
    if after is not None:
        rows = rows.filter(id__gt=after)
    found = list(rows.order_by("id")[: size + 1])
    return DeliveryPage(found[:size], has_previous=after is not None, has_next=len(found) > size)


EXPORT_COLUMNS = tuple(column for column in DELIVERY_COLUMNS if column != "message")


def message_delivery_chunks(
    *, message: Message, status: str = "", chunk: int = 5000
) -> Iterator[list[tuple]]:
    """All of a message's deliveries in id order as tuples of EXPORT_COLUMNS, a chunk at a time.

    Keyset chunks along the (message, id) index: memory stays flat for any number of rows.
    """
    rows = message_deliveries(message=message, status=status).values_list(*EXPORT_COLUMNS)
    last = 0
    while True:
        found = list(rows.filter(id__gt=last).order_by("id")[:chunk])
        if not found:
            return
        yield found
        last = found[-1][0]

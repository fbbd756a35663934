"""A message's deliveries as .csv and .xlsx, read in chunks so that memory stays flat.

Every text cell goes through `escape_formula`: an email address or an SMTP reply starting with
= + - @ must not become a formula in the spreadsheet that opens the file.
"""

import csv
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Any

from django.utils import timezone
from django.utils.translation import gettext as _
from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

from messaging.models import Delivery, Message
from messaging.selectors import message_delivery_chunks
from users_app.reports import escape_formula

CHUNK = 5000


def delivery_headers() -> list[str]:
    return [
        _("msgid"),
        _("userid"),
        _("email"),
        _("status"),
        _("attempts"),
        _("SMTP code"),
        _("SMTP reply"),
        _("Message-ID"),
        _("sent at"),
    ]


def delivery_rows(*, message: Message, status: str = "") -> Iterator[list[Any]]:
    """One list of cells per delivery, in id order; times in the current time zone, naive."""
    labels = {value: str(label) for value, label in Delivery.Status.choices}
    for chunk in message_delivery_chunks(message=message, status=status, chunk=CHUNK):
        for _id, userid, email, state, attempts, code, reply, message_id, sent_at in chunk:
            cells = [message.msgid, userid, email, labels.get(state, state), attempts, code]
            cells += [reply, message_id, _local(sent_at)]
            yield [escape_formula(cell) for cell in cells]


def _local(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return timezone.localtime(value).replace(tzinfo=None, microsecond=0)


class _Echo:
    """A file-like object whose write returns the line, for csv.writer in a streamed response."""

    def write(self, value: str) -> str:
        return value


def deliveries_csv(*, message: Message, status: str = "") -> Iterator[str]:
    """The CSV text, line by line (UTF-8 with a byte-order mark, so Excel reads the Chinese)."""
    writer = csv.writer(_Echo())
    yield "\ufeff" + writer.writerow(delivery_headers())
    for row in delivery_rows(message=message, status=status):
        yield writer.writerow(["" if cell is None else cell for cell in row])


def deliveries_xlsx(*, message: Message, out: IO[bytes], status: str = "") -> None:
    """The workbook, written row by row (openpyxl's write-only mode keeps rows on disk)."""
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(_("deliveries"))
    sheet.append(delivery_headers())
    for row in delivery_rows(message=message, status=status):
        sheet.append([_printable(cell) for cell in row])
    workbook.save(out)


def _printable(cell: Any) -> Any:
    """Control characters (possible in an SMTP reply) are not allowed in a workbook."""
    return ILLEGAL_CHARACTERS_RE.sub("", cell) if isinstance(cell, str) else cell

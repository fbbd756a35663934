"""Recipients as typed or uploaded on the compose page: split, cleaned, the first bad one named."""

import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from django.core.files.uploadedfile import UploadedFile
from django.utils.translation import gettext as _

from messaging.api.send_request import MAX_TAGS
from users_app.importer import FileRefused, read_rows
from users_app.validation import FieldError, clean_email, clean_tag, clean_userid

# Far more than the API's 1000 a request: a file of userids is what the console is for.
MAX_USERIDS = 100_000
MAX_EMAILS = 100_000
FILE_TYPES = (".xlsx", ".csv")
HEADERS = {"userid", "user_id", "userids"}
# Line breaks, spaces, commas and semicolons, also the full-width ones of Chinese keyboards.
SEPARATORS = re.compile(r"[\s,;\uff0c\uff1b\u3001]+")
# A tag may hold spaces: only line breaks, commas and semicolons separate tags.
TAG_SEPARATORS = re.compile(r"[\r\n,;\uff0c\uff1b\u3001]+")


class RecipientsRefused(ValueError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def split_values(text: str, *, tags: bool = False) -> list[str]:
    pattern = TAG_SEPARATORS if tags else SEPARATORS
    return [part.strip() for part in pattern.split(text or "") if part.strip()]


def clean_values(
    values: Iterable[str], cleaner: Callable[[object], str], *, limit: int
) -> tuple[str, ...]:
    """Each value cleaned, duplicates dropped, in order; the first bad value is named."""
    cleaned: dict[str, None] = {}
    for value in values:
        try:
            cleaned[cleaner(value)] = None
        except FieldError as exc:
            raise RecipientsRefused(f"{value[:64]}: {exc.message}") from None
        if len(cleaned) > limit:
            raise RecipientsRefused(_("At most %(max)d values.") % {"max": limit})
    return tuple(cleaned)


def clean_userids(text: str) -> tuple[str, ...]:
    return clean_values(split_values(text), clean_userid, limit=MAX_USERIDS)


def clean_emails(text: str) -> tuple[str, ...]:
    return clean_values(split_values(text), clean_email, limit=MAX_EMAILS)


def clean_tags(text: str) -> tuple[str, ...]:
    return clean_values(split_values(text, tags=True), clean_tag, limit=MAX_TAGS)


def userids_from_file(upload: UploadedFile) -> tuple[str, ...]:
    """The userids in the first column of an .xlsx or .csv file (a `userid` header is skipped).

    A bad userid is refused with its row number, as the spreadsheet shows it.
    """
    if Path(upload.name or "").suffix.lower() not in FILE_TYPES:
        raise RecipientsRefused(_("Upload an .xlsx or .csv file."))
    userids: dict[str, None] = {}
    try:
        with _local_path(upload) as path:
            for number, cell in _first_column(path):
                try:
                    userids[clean_userid(cell)] = None
                except FieldError as exc:
                    raise RecipientsRefused(
                        _("Row %(row)d: %(value)s: %(reason)s")
                        % {"row": number, "value": str(cell)[:64], "reason": exc.message}
                    ) from None
                if len(userids) > MAX_USERIDS:
                    raise RecipientsRefused(
                        _("The file holds more than %(max)d userids.") % {"max": MAX_USERIDS}
                    )
    except FileRefused as exc:
        raise RecipientsRefused(str(exc)) from None
    if not userids:
        raise RecipientsRefused(_("The file holds no userid."))
    return tuple(userids)


def _first_column(path: Path) -> Iterator[tuple[int, object]]:
    for number, row in enumerate(read_rows(path), start=1):
        cell = row[0] if row else None
        text = "" if cell is None else str(cell).strip()
        if not text or (number == 1 and text.lower() in HEADERS):
            continue
        yield number, cell


@contextmanager
def _local_path(upload: UploadedFile) -> Iterator[Path]:
    """The upload as a file on disk, which the spreadsheet reader needs."""
    if hasattr(upload, "temporary_file_path"):
        yield Path(upload.temporary_file_path())
        return
    suffix = Path(upload.name or "").suffix.lower()
    with tempfile.NamedTemporaryFile(suffix=suffix) as handle:
        for chunk in upload.chunks():
            handle.write(chunk)
        handle.flush()
        yield Path(handle.name)

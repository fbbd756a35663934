"""The user API's batch operations: /v1/user/opt (upsert bindings and tags) and /v1/user/delete.

Each item of a batch is validated whole before anything is written, then applied in its own
transaction: a bad item is reported in `fail` and never blocks, nor half-writes, the others.
"""

import logging
from dataclasses import dataclass, field
from typing import Any, TypedDict

from django.db import DatabaseError, transaction
from django.utils.translation import gettext as _

from channels_app.api_auth import ApiPrincipal
from channels_app.models import Channel
from ums.api import ApiCode
from users_app.models import UmsUser, UserEmailBinding, UserTag
from users_app.validation import FieldError, clean_bind_id, clean_email, clean_tag, clean_userid

logger = logging.getLogger(__name__)

MAX_ITEMS = 1000
OPERATIONS = ("set", "add", "del")
STORED_FIELDS = ("email", "tag")
# Fields of the vendor's other delivery types: accepted so that a multi-channel client keeps
# working against this email-only server, and ignored.
OTHER_CHANNEL_FIELDS = frozenset(
    {
        "phone",
        "app",
        "wechatoa",
        "wechatmp",
        "alipaylife",
        "dingtalkcc",
        "wechatwk",
        "wechatwk_linkedcorp",
    }
)


class ItemFailure(TypedDict):
    userid: str
    errcode: int
    errmsg: str


class BatchResult(TypedDict):
    success: list[str]
    fail: list[ItemFailure]


class ItemRefused(Exception):
    def __init__(self, code: ApiCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class UserChanges:
    """What one item asks for, validated: per bind_id, the address or tags to write or remove."""

    emails: dict[str, str] = field(default_factory=dict)
    email_deletes: dict[str, str | None] = field(default_factory=dict)  # None: whatever address
    tag_sets: dict[str, list[str]] = field(default_factory=dict)
    tag_adds: dict[str, list[str]] = field(default_factory=dict)
    tag_deletes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def only_deletes(self) -> bool:
        has_writes = self.emails or self.tag_sets or self.tag_adds
        return not has_writes and bool(self.email_deletes or self.tag_deletes)


# --- /v1/user/opt ----------------------------------------------------------------------------


def user_opt_apply(*, principal: ApiPrincipal, items: object) -> BatchResult:
    """Apply a batch of `{"userid", "set", "add", "del"}` items; unknown userids are created."""
    batch = _batch(items)
    channel_keys = frozenset(Channel.objects.order_by().values_list("channel_key", flat=True))
    result = BatchResult(success=[], fail=[])
    for item in batch:
        reported = _reported_userid(item.get("userid") if isinstance(item, dict) else None)
        try:
            userid, changes = _parse_item(item, principal=principal, channel_keys=channel_keys)
            with transaction.atomic():
                user_changes_apply(userid=userid, changes=changes)
        except FieldError as exc:
            result["fail"].append(_failure(reported, ApiCode.INVALID_PARAMETER, str(exc)))
        except ItemRefused as exc:
            result["fail"].append(_failure(reported, exc.code, exc.message))
        except DatabaseError:
            logger.exception("user opt: writing userid %r failed", reported)
            message = _("server error; the item was not written, retry it")
            result["fail"].append(_failure(reported, ApiCode.SERVER_ERROR, message))
        else:
            result["success"].append(userid)
    logger.info(
        "user opt by %s: %d written, %d failed",
        principal,
        len(result["success"]),
        len(result["fail"]),
    )
    return result


def user_changes_apply(*, userid: str, changes: UserChanges) -> None:
    """Write one user's validated changes: set and add first, then del."""
    if changes.only_deletes:
        user = UmsUser.objects.filter(userid=userid).first()
        if user is None:  # nothing to remove, and a removal must not create the user
            return
    else:
        user, _created = UmsUser.objects.get_or_create(userid=userid)
    if changes.emails:
        UserEmailBinding.objects.bulk_create(
            [UserEmailBinding(user=user, bind_id=b, email=e) for b, e in changes.emails.items()],
            update_conflicts=True,
            unique_fields=["user", "bind_id"],
            update_fields=["email", "updated_at"],
        )
    _write_tags(user, changes)
    for bind_id, address in changes.email_deletes.items():
        bindings = UserEmailBinding.objects.filter(user=user, bind_id=bind_id)
        if address is not None:
            bindings = bindings.filter(email__iexact=address)
        bindings.delete()


def _write_tags(user: UmsUser, changes: UserChanges) -> None:
    for bind_id, tags in changes.tag_sets.items():
        UserTag.objects.filter(user=user, bind_id=bind_id).exclude(tag__in=tags).delete()
    new_tags = [
        UserTag(user=user, bind_id=bind_id, tag=tag)
        for scopes in (changes.tag_sets, changes.tag_adds)
        for bind_id, tags in scopes.items()
        for tag in tags
    ]
    if new_tags:
        UserTag.objects.bulk_create(new_tags, ignore_conflicts=True)
    for bind_id, tags in changes.tag_deletes.items():
        UserTag.objects.filter(user=user, bind_id=bind_id, tag__in=tags).delete()


def _parse_item(
    item: object, *, principal: ApiPrincipal, channel_keys: frozenset[str]
) -> tuple[str, UserChanges]:
    if not isinstance(item, dict):
        raise FieldError("item", _("must be an object with a userid"))
    userid = clean_userid(item.get("userid"))
    changes = UserChanges()
    for operation, body in _operations(item).items():
        for name, value in body.items():
            if name in OTHER_CHANNEL_FIELDS:
                continue
            if name not in STORED_FIELDS:
                raise FieldError(f"{operation}.{name}", _("unknown field"))
            scopes = _scopes(f"{operation}.{name}", value)
            for raw_bind_id, content in scopes.items():
                bind_id = clean_bind_id(raw_bind_id, channel_keys=channel_keys)
                if not principal.can_write_scope(bind_id):
                    raise ItemRefused(ApiCode.SCOPE_NOT_WRITABLE, _scope_refused(bind_id))
                _add_change(changes, operation, name, bind_id, content)
    return userid, changes


def _operations(item: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The item's set/add/del bodies; the bare form `{"userid", "email", "tag"}` is a set."""
    allowed = {"userid", *OPERATIONS, *STORED_FIELDS, *OTHER_CHANNEL_FIELDS}
    unknown = sorted(name for name in item if name not in allowed)
    if unknown:
        raise FieldError(str(unknown[0])[:40], _("unknown field"))
    bare = {name: value for name, value in item.items() if name not in ("userid", *OPERATIONS)}
    if bare and "set" in item:
        raise FieldError("set", _("put email and tag inside set, or use the bare form, not both"))
    operations = {"set": bare} if bare else {}
    for operation in OPERATIONS:
        body = item.get(operation)
        if body is None:
            continue
        if not isinstance(body, dict):
            raise FieldError(operation, _("must be an object"))
        operations[operation] = body
    return operations


def _scopes(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FieldError(name, _("must be an object keyed by bind_id"))
    return value


def _add_change(
    changes: UserChanges, operation: str, name: str, bind_id: str, content: object
) -> None:
    if name == "email":
        if operation == "del":
            changes.email_deletes[bind_id] = clean_email(content) if content else None
        else:  # one address per scope: add replaces it like set does
            changes.emails[bind_id] = clean_email(content)
        return
    tags = _clean_tag_list(content)
    target = {"set": changes.tag_sets, "add": changes.tag_adds, "del": changes.tag_deletes}
    merged = target[operation].get(bind_id, []) + tags
    target[operation][bind_id] = list(dict.fromkeys(merged))


def _clean_tag_list(value: object) -> list[str]:
    if not isinstance(value, list):
        raise FieldError("tag", _("must be a list of tags for each bind_id"))
    return list(dict.fromkeys(clean_tag(tag) for tag in value))


def _scope_refused(bind_id: str) -> str:
    return _("bind_id: %(bind_id)s can be written only by its own channel or the AccessKey") % {
        "bind_id": bind_id
    }


# --- /v1/user/delete -------------------------------------------------------------------------


def users_delete(*, principal: ApiPrincipal, userids: object) -> BatchResult:
    """Delete users with all their bindings and tags. AccessKey only.

    A userid that does not exist counts as a success: the caller wants it gone, and it is,
    so a retried request answers the same as the first.
    """
    principal.require_access_key()
    result = BatchResult(success=[], fail=[])
    valid: list[str] = []
    for raw in _batch(userids):
        try:
            valid.append(clean_userid(raw))
        except FieldError as exc:
            result["fail"].append(
                _failure(_reported_userid(raw), ApiCode.INVALID_PARAMETER, str(exc))
            )
    with transaction.atomic():
        deleted, _by_model = UmsUser.objects.filter(userid__in=valid).delete()
    result["success"] = list(dict.fromkeys(valid))
    logger.info("user delete by %s: %d userids, %d rows deleted", principal, len(valid), deleted)
    return result


# --- helpers ---------------------------------------------------------------------------------


def _batch(items: object) -> list[Any]:
    if not isinstance(items, list):
        raise FieldError("body", _("must be a JSON array"))
    if len(items) > MAX_ITEMS:
        raise FieldError("body", _("at most %(max)d items") % {"max": MAX_ITEMS})
    return items


def _reported_userid(value: object) -> str:
    """The userid as the caller sent it, for the fail list (even when it is not valid)."""
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value)[:64]
    return ""


def _failure(userid: str, code: ApiCode, message: str) -> ItemFailure:
    return ItemFailure(userid=userid, errcode=int(code), errmsg=message)

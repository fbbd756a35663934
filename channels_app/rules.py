"""Sending strategies (`rule_id`): which sender a message uses, and where a recipient goes next.

A strategy is an ordered list of its channel's authorized senders. A *step* is a position in
that list, counted from 0 over all of the strategy's senders, usable or not, so that a step
keeps naming the same sender when another one is disabled (`Delivery.step` stores it).

The contract with the delivery pipeline
---------------------------------------

1. The API resolves `rule_id` with `sending_rule_for_message` (0 or absent: no strategy; an
   unknown, disabled or unusable one raises `SendingRuleInvalid`, code 1015026). It stores the
   rule on `Message.rule` and `rule_senders(rule=rule)[0]` as `Message.sender`. Deliveries start
   on step 0 (the column's default).
2. When sending the deliveries of a message that sit on step `k`, the pipeline asks
   `rule_sender(message=message, step=k)` once per batch and step (one query), never per
   recipient. `None` means that step has no usable sender now (disabled, port exception
   withdrawn, authorization removed): the rows move at once to
   `usable_step(message=message, step=k)` without using an attempt, or fail as "no sender"
   when that is `None`.
3. A delivery that fails permanently (5xx) or exhausts its retries on step `k` moves to
   `next_step(message=message, step=k)` if it is not `None`: status pending, attempts 0, no
   next_attempt_at, `step` set to the new step, and it does not count as failed on the message.
   Only when `next_step` is `None` is it recorded as failed (callback type 3). Rows are moved
   with one UPDATE per (message, step) over the ids of the batch, not one per recipient.
4. A message without a strategy behaves as before: every step names the message's own sender
   (or the channel's default if that one is no longer usable), and `next_step` is `None`.

A strategy disabled after a message was accepted still serves that message: disabling only
refuses new requests. Reordering a strategy's senders changes what the steps of messages still
sending name; deleting a strategy leaves its messages on their own sender.
"""

from typing import TYPE_CHECKING

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils.translation import gettext as _

from channels_app.models import Channel, ChannelSender, EmailSender, SendingRule, SendingRuleStep
from channels_app.selectors import channel_default_sender

if TYPE_CHECKING:
    from messaging.models import Message

# The vendor's code for an unknown, disabled or unusable sending strategy.
RULE_INVALID_CODE = 1015026


class SendingRuleInvalid(Exception):
    """`rule_id` names no strategy the channel can send with: the API answers 1015026.

    `reason` is one of "unknown", "disabled", "no_sender"; `str()` is a sentence for the
    caller, naming the rule_id.
    """

    code = RULE_INVALID_CODE

    def __init__(self, *, rule_id: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.rule_id = rule_id
        self.reason = reason


# --- reads ---------------------------------------------------------------------------------


def sending_rule_for_message(*, channel: Channel, rule_id: int | None) -> SendingRule | None:
    """The strategy a new message of `channel` uses: None (0 or absent) means the default sender.

    Raises `SendingRuleInvalid` when the channel has no such strategy, when it is disabled, or
    when none of its senders can send for the channel now.
    """
    if not rule_id:
        return None
    if isinstance(rule_id, bool) or not isinstance(rule_id, int) or rule_id < 0:
        raise SendingRuleInvalid(
            rule_id=rule_id,
            reason="unknown",
            message=_("rule_id must be a positive whole number."),
        )
    rule = SendingRule.objects.filter(channel=channel, rule_id=rule_id).first()
    if rule is None:
        raise SendingRuleInvalid(
            rule_id=rule_id,
            reason="unknown",
            message=_("The channel has no sending strategy %(rule_id)s.") % {"rule_id": rule_id},
        )
    if not rule.is_enabled:
        raise SendingRuleInvalid(
            rule_id=rule_id,
            reason="disabled",
            message=_("Sending strategy %(rule_id)s is disabled.") % {"rule_id": rule_id},
        )
    if not rule_senders(rule=rule):
        raise SendingRuleInvalid(
            rule_id=rule_id,
            reason="no_sender",
            message=_("Sending strategy %(rule_id)s has no sender that can send now.")
            % {"rule_id": rule_id},
        )
    return rule


def _rule_steps(*, rule_id: int, channel_id: int) -> list[EmailSender | None]:
    """Every step of the strategy in order: its sender if usable now, else None (one query)."""
    authorized = ChannelSender.objects.filter(
        channel_id=channel_id, sender_id=OuterRef("sender_id")
    )
    steps = (
        SendingRuleStep.objects.filter(rule_id=rule_id)
        .select_related("sender")
        .annotate(authorized=Exists(authorized))
        .order_by("position", "pk")
    )
    return [step.sender if step.authorized and _sendable(step.sender) else None for step in steps]


def _sendable(sender: EmailSender) -> bool:
    return sender.is_enabled and sender.port_usable


def rule_senders(*, rule: SendingRule) -> list[EmailSender]:
    """The strategy's senders that can send now, in order: enabled, with a usable port, and
    still authorized to the strategy's channel."""
    return [s for s in _rule_steps(rule_id=rule.pk, channel_id=rule.channel_id) if s is not None]


def rule_sender(*, message: "Message", step: int) -> EmailSender | None:
    """The sender for the deliveries of `message` on `step`, or None if that step cannot send
    now (see the module's contract: move the rows to `usable_step`)."""
    if message.rule_id is None:
        return _message_own_sender(message)
    steps = _rule_steps(rule_id=message.rule_id, channel_id=message.channel_id)
    return steps[step] if 0 <= step < len(steps) else None


def usable_step(*, message: "Message", step: int) -> int | None:
    """The first step at or after `step` whose sender can send now, or None."""
    if message.rule_id is None:
        return step if _message_own_sender(message) is not None else None
    steps = _rule_steps(rule_id=message.rule_id, channel_id=message.channel_id)
    return next((k for k in range(max(step, 0), len(steps)) if steps[k] is not None), None)


def next_step(*, message: "Message", step: int) -> int | None:
    """Where a recipient goes after failing for good on `step`: the next usable step, or None
    when the strategy has nothing left to try (and for a message without a strategy)."""
    if message.rule_id is None:
        return None
    return usable_step(message=message, step=step + 1)


def _message_own_sender(message: "Message") -> EmailSender | None:
    sender = message.sender
    if _sendable(sender):
        return sender
    return channel_default_sender(channel=message.channel)


# --- writes --------------------------------------------------------------------------------


def rule_validate_senders(*, channel: Channel, senders: list[EmailSender]) -> None:
    """A strategy names at least one sender, each once, each authorized to its channel."""
    if not senders:
        raise ValidationError(_("Choose at least one sender for the strategy."))
    seen: set[int] = set()
    for sender in senders:
        if sender.pk in seen:
            raise ValidationError(
                _("%(sender)s is chosen twice: each sender appears once in a strategy.")
                % {"sender": sender}
            )
        seen.add(sender.pk)
    authorized = set(
        ChannelSender.objects.filter(channel=channel, sender__in=senders).values_list(
            "sender_id", flat=True
        )
    )
    refused = [str(s) for s in senders if s.pk not in authorized]
    if refused:
        raise ValidationError(
            _("Not authorized to channel %(channel)s: %(senders)s.")
            % {"channel": channel.name, "senders": ", ".join(refused)}
        )


@transaction.atomic
def rule_set_senders(*, rule: SendingRule, senders: list[EmailSender]) -> list[SendingRuleStep]:
    """Make `senders`, in this order, the strategy's steps (validated first).

    Positions are stored from 1 for the console; a step number is the index in this order.
    """
    rule_validate_senders(channel=rule.channel, senders=senders)
    wanted = {sender.pk: position for position, sender in enumerate(senders, start=1)}
    rule.steps.exclude(sender_id__in=wanted).delete()
    existing = {step.sender_id: step for step in rule.steps.all()}
    for sender_id, position in wanted.items():
        step = existing.get(sender_id) or SendingRuleStep(rule=rule, sender_id=sender_id)
        if step.pk is None or step.position != position:
            step.position = position
            step.save()
    return list(rule.steps.select_related("sender").order_by("position", "pk"))


@transaction.atomic
def rule_create(
    *,
    channel: Channel,
    rule_id: int,
    name: str,
    senders: list[EmailSender],
    is_enabled: bool = True,
) -> SendingRule:
    rule = SendingRule(channel=channel, rule_id=rule_id, name=name, is_enabled=is_enabled)
    rule.full_clean()
    rule.save()
    rule_set_senders(rule=rule, senders=senders)
    return rule

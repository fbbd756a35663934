"""Sending strategies (rule_id): the console pages, the API's lookup and the pipeline's steps."""

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from channels_app import rules, services
from channels_app.models import ChannelSender, SendingRule
from messaging.models import Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def channel(db):
    channel, _secret = services.channel_create(name="Shop")
    return channel


@pytest.fixture
def senders(channel, make_sender):
    """Three senders authorized to the channel, the first its default."""
    made = [make_sender(name=name, code=name.upper()) for name in ("Alpha", "Bravo", "Charlie")]
    for sender in made:
        services.channel_authorize_sender(channel=channel, sender=sender)
    return made


@pytest.fixture
def make_message(channel, senders):
    def make(rule=None, sender=None):
        return Message.objects.create(
            channel=channel,
            sender=sender or senders[0],
            source=Message.Source.API,
            subject="Hi",
            rule=rule,
        )

    return make


def names(sender_list):
    return [sender.name if sender else None for sender in sender_list]


# --- the console -------------------------------------------------------------------------------

ROLE_EXPECTATIONS = {
    # role: (list, add page, change page)
    None: (200, 200, 200),
    "Channel admin": (200, 200, 200),
    "Marketing": (200, 403, 200),
    "Data admin": (403, 403, 403),
    "Reviewer": (403, 403, 403),
}


@pytest.mark.parametrize("role", list(ROLE_EXPECTATIONS))
def test_strategy_pages_per_role(client, role_user, channel, senders, role):
    rule = rules.rule_create(channel=channel, rule_id=1, name="Main", senders=senders[:2])
    client.force_login(role_user(role))

    statuses = (
        client.get(reverse("admin:channels_app_sendingrule_changelist")).status_code,
        client.get(reverse("admin:channels_app_sendingrule_add")).status_code,
        client.get(reverse("admin:channels_app_sendingrule_change", args=[rule.pk])).status_code,
    )

    assert statuses == ROLE_EXPECTATIONS[role]


def test_marketing_sees_the_senders_of_a_strategy_but_cannot_change_them(
    client, role_user, channel, senders
):
    rule = rules.rule_create(channel=channel, rule_id=1, name="Main", senders=senders[:2])
    client.force_login(role_user("Marketing"))
    url = reverse("admin:channels_app_sendingrule_change", args=[rule.pk])

    html = client.get(url).content.decode()
    response = client.post(url, rule_form(channel, [senders[2]], name="Changed"))

    assert "Alpha" in html and "Bravo" in html
    assert response.status_code == 403
    assert names(rules.rule_senders(rule=rule)) == ["Alpha", "Bravo"]


def test_the_list_shows_each_strategys_senders_in_order_and_filters_by_channel(
    admin_client, channel, senders, make_sender
):
    other, _secret = services.channel_create(name="Other shop")
    services.channel_authorize_sender(channel=other, sender=senders[0])
    rules.rule_create(channel=channel, rule_id=1, name="Shop main", senders=senders[::-1])
    rules.rule_create(channel=other, rule_id=1, name="Other main", senders=[senders[0]])
    url = reverse("admin:channels_app_sendingrule_changelist")

    everything = admin_client.get(url).content.decode()
    filtered = admin_client.get(url, {"channel__id__exact": channel.pk}).content.decode()

    assert "Charlie → Bravo → Alpha" in everything
    assert "Other main" in everything
    assert "Shop main" in filtered
    assert "Other main" not in filtered


def rule_form(channel, senders, *, rule_id=1, name="Main", existing=(), positions=None):
    """The add/change form: `existing` are the steps already saved, then `senders` as rows."""
    data = {
        "channel": channel.pk,
        "rule_id": rule_id,
        "name": name,
        "is_enabled": "on",
        "steps-TOTAL_FORMS": len(existing) + len(senders),
        "steps-INITIAL_FORMS": len(existing),
        "steps-MIN_NUM_FORMS": 1,
        "steps-MAX_NUM_FORMS": 1000,
    }
    rows = [(step.pk, step.sender) for step in existing] + [(None, s) for s in senders]
    for index, (step_id, sender) in enumerate(rows):
        data[f"steps-{index}-id"] = step_id or ""
        data[f"steps-{index}-sender"] = sender.pk if sender else ""
        data[f"steps-{index}-position"] = positions[index] if positions else index + 1
    return data


def test_channel_admin_creates_a_strategy_and_its_order_is_kept(
    client, role_user, channel, senders
):
    client.force_login(role_user("Channel admin"))

    response = client.post(
        reverse("admin:channels_app_sendingrule_add"),
        rule_form(channel, [senders[2], senders[0]], rule_id=7, name="Charlie first"),
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    rule = SendingRule.objects.get(channel=channel, rule_id=7)
    assert rule.name == "Charlie first"
    assert names(rules.rule_senders(rule=rule)) == ["Charlie", "Alpha"]


def test_the_order_numbers_reorder_the_senders(admin_client, channel, senders):
    rule = rules.rule_create(channel=channel, rule_id=1, name="Main", senders=senders)
    steps = list(rule.steps.order_by("position"))

    response = admin_client.post(
        reverse("admin:channels_app_sendingrule_change", args=[rule.pk]),
        rule_form(channel, [], existing=steps, positions=[3, 1, 2]),
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    assert names(rules.rule_senders(rule=rule)) == ["Bravo", "Charlie", "Alpha"]


def test_a_sender_added_at_the_bottom_comes_last(admin_client, channel, senders):
    rule = rules.rule_create(channel=channel, rule_id=1, name="Main", senders=senders[:2])
    steps = list(rule.steps.order_by("position"))
    url = reverse("admin:channels_app_sendingrule_change", args=[rule.pk])

    page = admin_client.get(url).content.decode()
    response = admin_client.post(url, rule_form(channel, [senders[2]], existing=steps))

    assert 'name="steps-__prefix__-position" value="3"' in page
    assert response.status_code == 302, response.content.decode()[:3000]
    assert names(rules.rule_senders(rule=rule)) == ["Alpha", "Bravo", "Charlie"]


def test_a_sender_not_authorized_to_the_channel_is_refused(
    admin_client, channel, senders, make_sender
):
    stranger = make_sender(name="Stranger", code="STRANGER")
    other, _secret = services.channel_create(name="Other shop")
    services.channel_authorize_sender(channel=other, sender=stranger)

    response = admin_client.post(
        reverse("admin:channels_app_sendingrule_add"),
        rule_form(channel, [senders[0], stranger]),
    )

    assert response.status_code == 200
    assert "Not authorized to channel Shop: Stranger (STRANGER)." in response.content.decode()
    assert not SendingRule.objects.exists()


def test_the_change_page_offers_only_the_channels_senders(
    admin_client, channel, senders, make_sender
):
    stranger = make_sender(name="Stranger", code="STRANGER")
    other, _secret = services.channel_create(name="Other shop")
    services.channel_authorize_sender(channel=other, sender=stranger)
    rule = rules.rule_create(channel=channel, rule_id=1, name="Main", senders=[senders[0]])
    url = reverse("admin:channels_app_sendingrule_change", args=[rule.pk])

    page = admin_client.get(url).content.decode()
    response = admin_client.post(
        url, rule_form(channel, [stranger], existing=list(rule.steps.all()))
    )

    assert "Stranger" not in page
    assert "Select a valid choice" in response.content.decode()
    assert names(rules.rule_senders(rule=rule)) == ["Alpha"]


def test_the_add_page_narrows_the_senders_to_the_chosen_channel(admin_client, channel, senders):
    page = admin_client.get(reverse("admin:channels_app_sendingrule_add")).content.decode()

    assert 'id="ums-rule-channel-senders"' in page
    assert f'"{channel.pk}": [{senders[0].pk}, {senders[1].pk}, {senders[2].pk}]' in page


def test_a_strategy_needs_a_sender(admin_client, channel, senders):
    data = rule_form(channel, [None])

    response = admin_client.post(reverse("admin:channels_app_sendingrule_add"), data)

    assert response.status_code == 200
    assert "This field is required." in response.content.decode()
    assert not SendingRule.objects.exists()


def test_a_sender_appears_once_in_a_strategy(admin_client, channel, senders):
    response = admin_client.post(
        reverse("admin:channels_app_sendingrule_add"),
        rule_form(channel, [senders[0], senders[1], senders[0]]),
    )

    assert response.status_code == 200
    assert "Please correct the duplicate data for sender." in response.content.decode()
    assert not SendingRule.objects.exists()


def test_removing_every_sender_is_refused(admin_client, channel, senders):
    rule = rules.rule_create(channel=channel, rule_id=1, name="Main", senders=senders[:2])
    data = rule_form(channel, [], existing=list(rule.steps.order_by("position")))
    data["steps-0-DELETE"] = data["steps-1-DELETE"] = "on"

    response = admin_client.post(
        reverse("admin:channels_app_sendingrule_change", args=[rule.pk]), data
    )

    assert response.status_code == 200
    assert "Choose at least one sender for the strategy." in response.content.decode()
    assert names(rules.rule_senders(rule=rule)) == ["Alpha", "Bravo"]


def test_a_rule_id_is_unique_per_channel_only(admin_client, channel, senders):
    other, _secret = services.channel_create(name="Other shop")
    services.channel_authorize_sender(channel=other, sender=senders[0])
    rules.rule_create(channel=channel, rule_id=1, name="Main", senders=[senders[0]])

    taken = admin_client.post(
        reverse("admin:channels_app_sendingrule_add"), rule_form(channel, [senders[1]])
    )
    elsewhere = admin_client.post(
        reverse("admin:channels_app_sendingrule_add"), rule_form(other, [senders[0]])
    )

    assert taken.status_code == 200
    assert elsewhere.status_code == 302
    assert SendingRule.objects.filter(rule_id=1).count() == 2


def test_the_channel_of_a_strategy_cannot_be_changed(admin_client, channel, senders):
    rule = rules.rule_create(channel=channel, rule_id=1, name="Main", senders=[senders[0]])
    other, _secret = services.channel_create(name="Other shop")
    data = rule_form(other, [], existing=list(rule.steps.all()), name="Renamed")

    response = admin_client.post(
        reverse("admin:channels_app_sendingrule_change", args=[rule.pk]), data
    )

    rule.refresh_from_db()
    assert response.status_code == 302
    assert (rule.channel, rule.name) == (channel, "Renamed")


# --- the services ------------------------------------------------------------------------------


def test_rule_set_senders_refuses_duplicates_and_strangers(channel, senders, make_sender):
    rule = rules.rule_create(channel=channel, rule_id=1, name="Main", senders=[senders[0]])
    stranger = make_sender(name="Stranger", code="STRANGER")

    with pytest.raises(ValidationError, match="chosen twice"):
        rules.rule_set_senders(rule=rule, senders=[senders[1], senders[1]])
    with pytest.raises(ValidationError, match="Not authorized"):
        rules.rule_set_senders(rule=rule, senders=[stranger])
    with pytest.raises(ValidationError, match="at least one"):
        rules.rule_set_senders(rule=rule, senders=[])
    assert names(rules.rule_senders(rule=rule)) == ["Alpha"]


# --- sending_rule_for_message: what the API maps to 1015026 ------------------------------------


@pytest.mark.parametrize("rule_id", [None, 0])
def test_no_rule_id_means_the_default_sender(channel, senders, rule_id):
    assert rules.sending_rule_for_message(channel=channel, rule_id=rule_id) is None


def test_a_known_enabled_rule_is_returned(channel, senders):
    rule = rules.rule_create(channel=channel, rule_id=3, name="Main", senders=senders)

    assert rules.sending_rule_for_message(channel=channel, rule_id=3) == rule


def invalid(channel, rule_id):
    with pytest.raises(rules.SendingRuleInvalid) as caught:
        rules.sending_rule_for_message(channel=channel, rule_id=rule_id)
    assert caught.value.code == 1015026
    return caught.value


def test_an_unknown_rule_id_is_1015026(channel, senders):
    error = invalid(channel, 9)

    assert error.reason == "unknown"
    assert str(error) == "The channel has no sending strategy 9."


def test_another_channels_rule_id_is_unknown(channel, senders):
    other, _secret = services.channel_create(name="Other shop")
    services.channel_authorize_sender(channel=other, sender=senders[0])
    rules.rule_create(channel=other, rule_id=4, name="Theirs", senders=[senders[0]])

    assert invalid(channel, 4).reason == "unknown"


def test_a_negative_rule_id_is_1015026(channel, senders):
    assert invalid(channel, -1).reason == "unknown"


def test_a_disabled_rule_is_1015026(channel, senders):
    rules.rule_create(channel=channel, rule_id=2, name="Off", senders=senders, is_enabled=False)

    error = invalid(channel, 2)

    assert error.reason == "disabled"
    assert str(error) == "Sending strategy 2 is disabled."


def test_a_rule_whose_senders_cannot_send_is_1015026(channel, senders):
    rules.rule_create(channel=channel, rule_id=2, name="Main", senders=senders[:2])
    senders[0].is_enabled = False
    senders[0].save()
    ChannelSender.objects.filter(channel=channel, sender=senders[1]).delete()

    assert invalid(channel, 2).reason == "no_sender"


# --- the steps the pipeline follows ------------------------------------------------------------


def test_rule_senders_keeps_the_order_and_skips_what_cannot_send(channel, senders, make_sender):
    no_port = make_sender(name="Delta", code="DELTA", port=2525, approve=False)
    services.channel_authorize_sender(channel=channel, sender=no_port)
    rule = rules.rule_create(
        channel=channel, rule_id=1, name="Main", senders=[senders[2], no_port, *senders[:2]]
    )
    senders[0].is_enabled = False
    senders[0].save()

    assert names(rules.rule_senders(rule=rule)) == ["Charlie", "Bravo"]


def test_each_step_names_its_sender_and_a_failure_moves_to_the_next(channel, senders, make_message):
    rule = rules.rule_create(channel=channel, rule_id=1, name="Main", senders=senders)
    message = make_message(rule=rule)

    assert names(rules.rule_sender(message=message, step=k) for k in range(4)) == [
        "Alpha",
        "Bravo",
        "Charlie",
        None,
    ]
    assert [rules.next_step(message=message, step=k) for k in range(3)] == [1, 2, None]


def test_a_step_whose_sender_was_disabled_is_skipped(channel, senders, make_message):
    rule = rules.rule_create(channel=channel, rule_id=1, name="Main", senders=senders)
    message = make_message(rule=rule)
    senders[1].is_enabled = False
    senders[1].save()

    assert rules.rule_sender(message=message, step=1) is None
    assert rules.next_step(message=message, step=0) == 2
    assert rules.usable_step(message=message, step=1) == 2
    assert rules.rule_sender(message=message, step=2) == senders[2]


def test_a_sender_no_longer_authorized_ends_the_strategy(channel, senders, make_message):
    rule = rules.rule_create(channel=channel, rule_id=1, name="Main", senders=senders[:2])
    message = make_message(rule=rule)
    ChannelSender.objects.filter(channel=channel, sender=senders[1]).delete()

    assert rules.next_step(message=message, step=0) is None
    assert rules.usable_step(message=message, step=1) is None


def test_a_disabled_strategy_still_serves_the_messages_it_accepted(channel, senders, make_message):
    rule = rules.rule_create(channel=channel, rule_id=1, name="Main", senders=senders[:2])
    message = make_message(rule=rule)
    rule.is_enabled = False
    rule.save()

    assert rules.rule_sender(message=message, step=1) == senders[1]
    assert rules.next_step(message=message, step=0) == 1


def test_a_message_without_strategy_uses_its_own_sender_and_has_no_next_step(
    channel, senders, make_message
):
    message = make_message(sender=senders[1])

    assert rules.rule_sender(message=message, step=0) == senders[1]
    assert rules.next_step(message=message, step=0) is None


def test_a_message_without_strategy_falls_back_to_the_channels_default(
    channel, senders, make_message
):
    message = make_message(sender=senders[1])
    senders[1].is_enabled = False
    senders[1].save()

    assert rules.rule_sender(message=message, step=0) == senders[0]


def test_a_step_costs_one_query(channel, senders, make_message, django_assert_num_queries):
    rule = rules.rule_create(channel=channel, rule_id=1, name="Main", senders=senders)
    message = make_message(rule=rule)

    with django_assert_num_queries(1):
        rules.rule_sender(message=message, step=2)
    with django_assert_num_queries(1):
        rules.next_step(message=message, step=0)


# --- the pipeline follows the steps (real SMTP servers) ----------------------------------------


async def _refuse_permanently(server, session, envelope, address, rcpt_options):
    return "550 5.1.1 no such mailbox here"


async def _refuse_for_now(server, session, envelope, address, rcpt_options):
    return "451 4.7.1 try again later"


@pytest.fixture
def two_servers():
    from tests.smtp_server import SmtpTestServer

    with SmtpTestServer(mode="plain", require_auth=False) as first:
        with SmtpTestServer(mode="plain", require_auth=False) as second:
            yield first, second


@pytest.fixture
def fallback(channel, make_sender, two_servers):
    """Strategy 1 of the channel: sender A on the first server, then B on the second; three
    users with an address, and a verified callback URL."""
    from django.utils import timezone

    from channels_app.models import CallbackUrl
    from users_app.models import UmsUser, UserEmailBinding

    made = []
    for name, server in zip(("A", "B"), two_servers, strict=True):
        sender = make_sender(server, name=name, code=name, account="", password="")
        services.channel_authorize_sender(channel=channel, sender=sender, is_default=name == "A")
        made.append(sender)
    for userid in ("u1", "u2", "u3"):
        user = UmsUser.objects.create(userid=userid)
        UserEmailBinding.objects.create(user=user, bind_id="all", email=f"{userid}@example.com")
    CallbackUrl.objects.create(
        channel=channel, url="https://shop.example/cb", verified_at=timezone.now()
    )
    rule = rules.rule_create(channel=channel, rule_id=1, name="Fallback", senders=made)
    return rule, made


def send_with_rule(channel, rule_id=1):
    from messaging.services import Audience, Content, Options, message_create

    message, _created = message_create(
        channel=channel,
        audience=Audience(userids=["u1", "u2", "u3"]),
        content=Content(subject="Hello", html="<p>Hello</p>"),
        options=Options(rule_id=rule_id),
        source="api",
    )
    return message


def deliver_everything(message):
    """What the workers and the countdowns do, in this process, until nothing is open."""
    from django.utils import timezone

    from messaging import sending
    from messaging.models import Delivery

    batches = sending.message_resolve(message_id=message.pk)
    for _round in range(10):
        open_rows = message.deliveries.filter(status__in=sending.OPEN)
        if not open_rows.exists():
            break
        open_rows.filter(status=Delivery.Status.RETRYING).update(next_attempt_at=timezone.now())
        for batch in batches:
            sending.batch_send(message_id=message.pk, batch=batch)
    message.refresh_from_db()
    return message


def callback_types():
    from messaging.callbacks import callbacks_collect
    from messaging.models import CallbackBatch

    callbacks_collect()
    found = {}
    for batch in CallbackBatch.objects.order_by("pk"):
        for record in batch.records:
            found.setdefault(record["userid"], []).append((record["type"], record["sender_id"]))
    return found


def test_a_550_on_the_first_sender_is_delivered_by_the_second(channel, fallback, two_servers):
    first, second = two_servers
    first.controller.handler.handle_RCPT = _refuse_permanently

    message = deliver_everything(send_with_rule(channel))

    rows = list(message.deliveries.values_list("status", "step", "attempts"))
    assert rows == [("sent", 1, 1)] * 3
    assert (message.status, message.sent, message.failed) == ("done", 3, 0)
    assert first.recorder.messages == []
    assert sorted(m.rcpt_tos[0] for m in second.recorder.messages) == [
        "u1@example.com",
        "u2@example.com",
        "u3@example.com",
    ]
    assert callback_types() == {f"u{n}": [(0, "B"), (2, "B")] for n in (1, 2, 3)}


def test_a_sender_that_keeps_deferring_gives_way_after_its_tries(
    channel, fallback, two_servers, settings
):
    settings.UMS_DELIVERY_MAX_ATTEMPTS = 2
    first, second = two_servers
    first.controller.handler.handle_RCPT = _refuse_for_now

    message = deliver_everything(send_with_rule(channel))

    assert set(message.deliveries.values_list("status", "step")) == {("sent", 1)}
    assert (message.status, message.sent, message.failed) == ("done", 3, 0)
    assert len(second.recorder.messages) == 3


def test_when_every_sender_refuses_the_recipients_fail_on_the_last_step(
    channel, fallback, two_servers
):
    for server in two_servers:
        server.controller.handler.handle_RCPT = _refuse_permanently

    message = deliver_everything(send_with_rule(channel))

    assert set(message.deliveries.values_list("status", "step", "smtp_code")) == {
        ("failed", 1, 550)
    }
    assert (message.status, message.sent, message.failed) == ("done", 0, 3)
    assert callback_types() == {f"u{n}": [(0, "B"), (3, "B")] for n in (1, 2, 3)}


def test_a_first_sender_disabled_before_sending_leaves_it_to_the_second(
    channel, fallback, two_servers
):
    _rule, (alpha, _bravo) = fallback
    message = send_with_rule(channel)
    alpha.is_enabled = False
    alpha.save()

    message = deliver_everything(message)

    assert (
        list(message.deliveries.values_list("status", "step", "attempts")) == [("sent", 1, 1)] * 3
    )
    assert len(two_servers[1].recorder.messages) == 3


def test_no_usable_sender_left_fails_the_recipients(channel, fallback):
    _rule, made = fallback
    message = send_with_rule(channel)
    for sender in made:
        sender.is_enabled = False
        sender.save()

    message = deliver_everything(message)

    assert set(message.deliveries.values_list("status", "smtp_reply")) == {
        ("failed", "No sender of the message's strategy can send now.")
    }
    assert (message.status, message.failed) == ("done", 3)


def test_a_worker_that_died_on_the_last_try_leaves_its_rows_to_the_next_sender(
    channel, fallback, two_servers, settings
):
    from datetime import timedelta

    from django.utils import timezone

    from messaging import sending

    message = send_with_rule(channel)
    [batch] = sending.message_resolve(message_id=message.pk)
    long_ago = timezone.now() - timedelta(hours=1)
    message.deliveries.update(
        status="sending", claimed_at=long_ago, attempts=settings.UMS_DELIVERY_MAX_ATTEMPTS
    )

    outcome = sending.sweep()
    assert outcome.batches == [(message.pk, batch, message.priority)]
    assert set(message.deliveries.values_list("status", "step", "attempts")) == {("pending", 1, 0)}
    sending.batch_send(message_id=message.pk, batch=batch)

    message.refresh_from_db()
    assert (message.status, message.sent, message.failed) == ("done", 3, 0)
    assert len(two_servers[1].recorder.messages) == 3

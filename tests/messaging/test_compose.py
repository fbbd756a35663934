"""The console's compose page through the admin test client: drafts, preview, review, send."""

import re
import threading
from datetime import timedelta
from email import message_from_bytes

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from channels_app import services as channel_services
from messaging import audience as audiences
from messaging import sending
from messaging.compose.selectors import AudienceCount, audience_count
from messaging.drafts import DraftGone, draft_from_message, draft_send, draft_version
from messaging.models import Draft, Material, Message
from messaging.services import materials_purge
from tests.users_app.files import csv_bytes, xlsx_bytes

pytestmark = pytest.mark.django_db

ADD = reverse("admin:messaging_draft_add")
CHANGELIST = reverse("admin:messaging_draft_changelist")
PLAIN_TEXT = reverse("admin:messaging_draft_plain_text")
BLANK = {
    "channel": "",
    "audience_kind": "userid",
    "userids": "",
    "tags": "",
    "emails": "",
    "subject": "",
    "from_name": "",
    "reply_to": "",
    "html": "",
    "priority": "2",
    "send_at": "",
}


def change_url(draft: Draft) -> str:
    return reverse("admin:messaging_draft_change", args=[draft.pk])


def review_url(draft: Draft) -> str:
    return reverse("admin:messaging_draft_review", args=[draft.pk])


def send_url(draft: Draft) -> str:
    return reverse("admin:messaging_draft_send", args=[draft.pk])


def post(client, url: str = ADD, button: str = "_save", follow: bool = False, **fields):
    return client.post(url, {**BLANK, **fields, button: "1"}, follow=follow)


def ready(channel, **fields) -> dict:
    """A complete email to two raw addresses on the channel."""
    return {
        "channel": channel.pk,
        "audience_kind": "email",
        "emails": "ann@example.com\nbob@example.com",
        "subject": "Spring sale",
        "html": "<p>Hello <b>spring</b></p>",
        **fields,
    }


def deliver(message: Message) -> Message:
    """What the workers do, in this process."""
    for batch in sending.message_resolve(message_id=message.pk):
        sending.batch_send(message_id=message.pk, batch=batch)
    message.refresh_from_db()
    return message


def version_of(response) -> str:
    return re.search(r'name="version" value="([^"]+)"', response.content.decode())[1]


def confirm(client, draft: Draft):
    """Open the review page and press Confirm send, as the author would."""
    version = version_of(client.get(review_url(draft)))
    return client.post(send_url(draft), {"version": version})


def errors(response) -> str:
    return " ".join(
        re.findall(r'<ul class="errorlist[^"]*"[^>]*>(.*?)</ul>', response.content.decode(), re.S)
    )


@pytest.fixture
def marketing(client, role_user):
    client.force_login(role_user("Marketing"))
    return client


@pytest.fixture
def author(django_user_model):
    return django_user_model.objects.get(username="marketing")


# --- drafts ------------------------------------------------------------------------------------


def test_a_draft_is_saved_and_reopened_with_everything_as_typed(marketing, shop, author):
    response = post(
        marketing,
        **ready(shop, from_name="Spring Shop", reply_to="help@shop.example.com", priority="1"),
    )

    draft = Draft.objects.get()
    assert response.status_code == 302 and response.url == change_url(draft)
    assert draft.created_by == author
    assert draft.audience == {"kind": "email", "values": ["ann@example.com", "bob@example.com"]}
    assert (draft.subject, draft.from_name, draft.priority) == ("Spring sale", "Spring Shop", 1)

    page = marketing.get(change_url(draft)).content.decode()
    assert "ann@example.com\nbob@example.com</textarea>" in page
    assert 'value="Spring sale"' in page and 'value="help@shop.example.com"' in page
    assert "&lt;p&gt;Hello &lt;b&gt;spring&lt;/b&gt;&lt;/p&gt;</textarea>" in page
    assert f'<option value="{shop.pk}" selected>Shop</option>' in page


def test_saving_asks_for_nothing_and_reopening_then_saving_updates_the_same_draft(marketing, shop):
    post(marketing, subject="Half an idea")
    draft = Draft.objects.get()
    assert draft.channel is None and draft.audience == {"kind": "userid", "values": []}

    post(marketing, change_url(draft), **ready(shop, subject="A whole idea"))

    draft.refresh_from_db()
    assert Draft.objects.count() == 1
    assert (draft.subject, draft.channel) == ("A whole idea", shop)


def test_the_changelist_lists_only_the_users_own_drafts(marketing, shop, role_user):
    other = role_user("Marketing", username="colleague")
    Draft.objects.create(created_by=other, subject="Not mine")
    post(marketing, subject="Mine")

    page = marketing.get(CHANGELIST).content.decode()

    assert "Mine" in page and "Not mine" not in page
    assert "Compose a new email" in page and ADD in page


def test_a_user_cannot_open_review_or_send_another_users_draft(marketing, shop, role_user):
    other = role_user("Marketing", username="colleague")
    theirs = Draft.objects.create(
        created_by=other,
        channel=shop,
        subject="Theirs",
        html="<p>x</p>",
        audience={"kind": "email", "values": ["x@example.com"]},
    )

    assert marketing.get(change_url(theirs)).status_code == 404
    assert marketing.get(review_url(theirs)).status_code == 404
    marketing.post(send_url(theirs), {"version": theirs.updated_at.isoformat()})
    post(marketing, change_url(theirs), subject="Hijacked")

    theirs.refresh_from_db()
    assert theirs.subject == "Theirs"
    assert not Message.objects.exists()


def test_a_superuser_sees_everyones_drafts(client, role_user, shop):
    Draft.objects.create(created_by=role_user("Marketing"), subject="From marketing")
    client.force_login(role_user(None))

    page = client.get(CHANGELIST).content.decode()

    assert "From marketing" in page


# --- audience ----------------------------------------------------------------------------------


def test_userids_are_split_on_line_breaks_commas_and_spaces(marketing, shop):
    post(marketing, channel=shop.pk, userids="u1, u2\nu3  u4\uff0cu5\n\nu1")

    assert Draft.objects.get().audience == {
        "kind": "userid",
        "values": ["u1", "u2", "u3", "u4", "u5"],
    }


def test_a_bad_typed_userid_is_named(marketing, shop):
    response = post(marketing, channel=shop.pk, userids="u1 bad/id")

    assert "bad/id: only letters, digits" in errors(response)
    assert not Draft.objects.exists()


def test_userids_from_a_one_column_workbook_are_added_to_those_typed(marketing, shop):
    workbook = xlsx_bytes([["u2"], ["u3"], [None], [10004]], header=["userid"])

    marketing.post(
        ADD,
        {
            **BLANK,
            "channel": shop.pk,
            "userids": "u1 u2",
            "userid_file": SimpleUploadedFile("list.xlsx", workbook),
            "_save": "1",
        },
    )

    assert Draft.objects.get().audience["values"] == ["u1", "u2", "u3", "10004"]


def test_a_bad_userid_in_the_file_is_refused_naming_its_row(marketing, shop):
    rows = csv_bytes([["u1"], ["has space"], ["u3"]], header=["userid"])

    response = marketing.post(
        ADD,
        {
            **BLANK,
            "channel": shop.pk,
            "userid_file": SimpleUploadedFile("list.csv", rows),
            "_save": "1",
        },
    )

    assert "Row 3: has space: only letters, digits" in errors(response)
    assert not Draft.objects.exists()


def test_a_file_that_is_not_a_spreadsheet_is_refused(marketing, shop):
    response = marketing.post(
        ADD,
        {
            **BLANK,
            "channel": shop.pk,
            "userid_file": SimpleUploadedFile("list.pdf", b"%PDF-1.4"),
            "_save": "1",
        },
    )

    assert "Upload an .xlsx or .csv file." in errors(response)


def test_tags_and_addresses_are_cleaned(marketing, shop):
    bad = post(marketing, channel=shop.pk, audience_kind="email", emails="ann@example.com nope")
    assert "nope: not a valid address" in errors(bad)

    post(marketing, channel=shop.pk, audience_kind="tag", tags="vip, new buyers\nvip")
    assert Draft.objects.get().audience == {"kind": "tag", "values": ["vip", "new buyers"]}


def test_userids_resolve_to_the_counted_recipients(marketing, shop, bind, plain_server):
    bind("u1", "all", "u1@home.example")
    bind("u2", shop.channel_key, "u2@shop.example")
    bind("u3")  # known, but without any address
    post(
        marketing, button="_review", **ready(shop, audience_kind="userid", userids="u1 u2 u3 ghost")
    )
    draft = Draft.objects.get()

    page = marketing.get(review_url(draft)).content.decode()

    assert '<td id="review-total">4</td>' in page
    assert '<td id="review-with-address">2</td>' in page
    assert '<td id="review-without-address">2</td>' in page
    confirm(marketing, draft)
    message = deliver(Message.objects.get())
    assert (message.total, message.sent, message.invalid) == (4, 2, 2)
    assert sorted(m.rcpt_tos[0] for m in plain_server.recorder.messages) == [
        "u1@home.example",
        "u2@shop.example",
    ]


def test_tags_resolve_to_the_counted_recipients(marketing, shop, bind, plain_server):
    bind("a", "all", "a@example.com", tags=("vip",))
    bind("b", shop.channel_key, tags=("vip",))  # tagged, without an address
    bind("c", "all", "c@example.com", tags=("other",))
    post(marketing, button="_review", **ready(shop, audience_kind="tag", tags="vip"))
    draft = Draft.objects.get()

    page = marketing.get(review_url(draft)).content.decode()

    assert '<td id="review-total">2</td>' in page
    assert '<td id="review-without-address">1</td>' in page
    confirm(marketing, draft)
    message = deliver(Message.objects.get())
    assert (message.total, message.sent, message.invalid) == (2, 1, 1)
    assert [m.rcpt_tos[0] for m in plain_server.recorder.messages] == ["a@example.com"]


def test_all_users_of_the_channel_are_counted(marketing, shop, bind, plain_server):
    for n in range(30):
        bind(f"u{n}", "all", f"u{n}@example.com")
    bind("other", "0123456789abcdef01234567", "other@example.com")  # another channel's binding
    bind("nobody")
    post(marketing, button="_review", **ready(shop, audience_kind="all", emails=""))
    draft = Draft.objects.get()

    page = marketing.get(review_url(draft)).content.decode()

    assert '<td id="review-total">30</td>' in page
    assert '<td id="review-without-address">0</td>' in page
    confirm(marketing, draft)
    message = deliver(Message.objects.get())
    assert message.audience == {"broadcast": True}
    assert (message.total, message.sent) == (30, 30)


def test_a_broadcast_or_a_tag_is_counted_in_one_query_however_many_users(
    shop, bind, monkeypatch, django_assert_num_queries
):
    monkeypatch.setattr(audiences, "CHUNK", 10)  # resolving 30 users takes 4 queries
    for n in range(30):
        bind(f"u{n}", "all", f"u{n}@example.com", tags=("vip",))

    with django_assert_num_queries(1):
        everyone = audience_count(channel=shop, kind="all", values=[])
    with django_assert_num_queries(1):
        tagged = audience_count(channel=shop, kind="tag", values=["vip"])

    assert everyone == tagged == AudienceCount(total=30, without_address=0)
    assert len(list(audiences.resolve_everyone(channel_key=shop.channel_key))) == 30


def test_raw_addresses_are_counted_once_each(marketing, shop, plain_server):
    post(
        marketing,
        button="_review",
        **ready(shop, emails="a@example.com b@example.com a@example.com"),
    )
    draft = Draft.objects.get()

    page = marketing.get(review_url(draft)).content.decode()

    assert '<td id="review-total">2</td>' in page
    confirm(marketing, draft)
    assert deliver(Message.objects.get()).sent == 2


# --- review and send ---------------------------------------------------------------------------


def test_review_shows_the_sender_and_the_from_line_that_will_be_used(marketing, shop):
    response = post(marketing, button="_review", **ready(shop))
    draft = Draft.objects.get()
    assert response.url == review_url(draft)

    page = marketing.get(review_url(draft)).content.decode()
    assert '<td id="review-from">Shop &lt;noreply@shop.example.com&gt;</td>' in page
    assert '<td id="review-sender">Sender 1</td>' in page
    assert "Confirm send" in page

    post(marketing, change_url(draft), "_review", **ready(shop, from_name="Spring Team"))
    page = marketing.get(review_url(draft)).content.decode()
    assert '<td id="review-from">Spring Team &lt;noreply@shop.example.com&gt;</td>' in page


def test_review_and_send_requires_a_complete_email(marketing, shop):
    response = post(marketing, button="_review", channel=shop.pk)

    text = errors(response)
    assert "Give at least one recipient." in text
    assert "Give the email a subject." in text
    assert "Write the body of the email." in text
    assert not Draft.objects.exists()


def test_confirm_creates_one_console_message_and_consumes_the_draft(
    marketing, shop, author, plain_server
):
    post(marketing, **ready(shop, reply_to="help@shop.example.com", priority="1"))
    draft = Draft.objects.get()

    response = confirm(marketing, draft)

    message = Message.objects.get()
    assert response.status_code == 302
    assert response.url == reverse("admin:messaging_message_change", args=[message.pk])
    assert message.source == Message.Source.CONSOLE
    assert (message.created_by, message.owner) == (author, "marketing")
    assert message.audience == {"email": ["ann@example.com", "bob@example.com"]}
    assert (message.subject, message.reply_to, message.priority) == (
        "Spring sale",
        "help@shop.example.com",
        1,
    )
    assert message.text == "Hello spring"
    assert not message.is_test
    assert not Draft.objects.exists()
    deliver(message)
    assert sorted(m.rcpt_tos[0] for m in plain_server.recorder.messages) == [
        "ann@example.com",
        "bob@example.com",
    ]


def test_confirming_twice_sends_once(marketing, shop):
    post(marketing, **ready(shop))
    draft = Draft.objects.get()
    version = version_of(marketing.get(review_url(draft)))

    first = marketing.post(send_url(draft), {"version": version})
    second = marketing.post(send_url(draft), {"version": version}, follow=True)

    assert first.status_code == 302
    assert Message.objects.count() == 1
    assert "already sent or deleted: nothing more was sent" in second.content.decode()


@pytest.mark.django_db(transaction=True)
def test_two_confirms_at_the_same_moment_send_once(shop, role_user):
    user = role_user("Marketing")
    draft = Draft.objects.create(
        created_by=user,
        channel=shop,
        subject="Once",
        html="<p>once</p>",
        audience={"kind": "email", "values": ["a@example.com"]},
        send_at=timezone.now() + timedelta(days=1),  # scheduled: nothing goes to the broker
    )
    version = draft_version(draft)
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def press() -> None:
        start.wait()
        try:
            draft_send(draft_id=draft.pk, user=user, version=version)
            outcomes.append("sent")
        except DraftGone:
            outcomes.append("gone")
        finally:
            connection.close()

    threads = [threading.Thread(target=press) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["gone", "sent"]
    assert Message.objects.count() == 1


def test_a_draft_changed_after_review_is_not_sent(marketing, shop):
    post(marketing, **ready(shop))
    draft = Draft.objects.get()
    version = version_of(marketing.get(review_url(draft)))
    post(marketing, change_url(draft), **ready(shop, subject="Changed in another tab"))

    response = marketing.post(send_url(draft), {"version": version})

    assert "changed after you reviewed it" in errors(response)
    assert not Message.objects.exists()
    assert Draft.objects.exists()


def test_a_refused_send_is_shown_with_its_reason_and_keeps_the_draft(marketing, shop):
    post(marketing, **ready(shop))
    draft = Draft.objects.get()
    version = version_of(marketing.get(review_url(draft)))
    shop.authorizations.all().delete()  # the channel lost its sender meanwhile

    page = marketing.get(review_url(draft)).content.decode()
    response = marketing.post(send_url(draft), {"version": version})

    assert "no enabled, authorized email sender" in page and "Confirm send" not in page
    assert "The channel has no enabled, authorized email sender." in errors(response)
    assert not Message.objects.exists()
    assert Draft.objects.exists()


def test_a_scheduled_send_must_be_in_the_future(marketing, shop):
    past = (timezone.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    refused = post(marketing, button="_review", **ready(shop, send_at=past))
    assert "The scheduled time has passed" in errors(refused)

    later = timezone.now() + timedelta(days=1)
    post(marketing, **ready(shop, send_at=later.strftime("%Y-%m-%dT%H:%M")))
    draft = Draft.objects.get()
    assert "review-send-at" in marketing.get(review_url(draft)).content.decode()
    confirm(marketing, draft)

    message = Message.objects.get()
    assert message.status == Message.Status.SCHEDULED
    assert message.send_at == later.replace(second=0, microsecond=0)


def test_a_schedule_time_that_passed_while_saved_stops_the_send(marketing, shop):
    post(marketing, **ready(shop))
    draft = Draft.objects.get()
    Draft.objects.filter(pk=draft.pk).update(send_at=timezone.now() - timedelta(minutes=1))

    page = marketing.get(review_url(draft)).content.decode()
    response = confirm(marketing, draft)

    assert "The scheduled time has passed" in page and "Confirm send" not in page
    assert "The scheduled time has passed" in errors(response)
    assert not Message.objects.exists()


# --- test send ---------------------------------------------------------------------------------


def test_a_test_goes_only_to_the_authors_own_address(marketing, shop, author, plain_server):
    response = post(
        marketing, button="_test", **ready(shop, emails="many@example.com\nmore@example.com")
    )

    draft = Draft.objects.get()
    assert response.url == change_url(draft)
    message = Message.objects.get()
    assert message.is_test and message.source == Message.Source.CONSOLE
    assert message.audience == {"email": ["staff@example.com"]}
    assert (message.subject, message.created_by) == ("Spring sale", author)
    deliver(message)
    assert [m.rcpt_tos for m in plain_server.recorder.messages] == [["staff@example.com"]]
    page = marketing.get(change_url(draft)).content.decode()
    assert "A test was sent to staff@example.com only." in page


def test_a_test_needs_no_audience(marketing, shop):
    post(marketing, button="_test", **ready(shop, emails=""))

    assert Message.objects.get().audience == {"email": ["staff@example.com"]}


def test_a_test_refused_by_the_channel_says_why_and_keeps_the_draft(marketing, shop):
    shop.authorizations.all().delete()

    response = post(marketing, button="_test", **ready(shop), follow=True)

    assert "no test was sent: The channel has no enabled, authorized email sender." in (
        response.content.decode()
    )
    assert Draft.objects.exists() and not Message.objects.exists()


def test_a_test_is_refused_to_a_user_without_an_address(marketing, shop, author):
    author.email = ""
    author.save()

    response = post(marketing, button="_test", **ready(shop))

    assert "Your account has no valid email address" in errors(response)
    assert not Message.objects.exists()


# --- permissions -------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["Reviewer", "Data admin", "Channel admin"])
def test_staff_who_may_not_send_get_no_compose_page(client, role_user, shop, role):
    user = role_user(role)
    client.force_login(user)
    draft = Draft.objects.create(created_by=user, channel=shop, subject="x")

    assert ADD not in client.get(reverse("admin:index")).content.decode()
    assert client.get(ADD).status_code == 403
    assert client.post(ADD, {**ready(shop), "_save": "1"}).status_code == 403
    assert client.get(CHANGELIST).status_code == 403
    assert client.get(review_url(draft)).status_code == 403
    assert client.post(send_url(draft), {"version": "x"}).status_code == 403
    assert client.post(PLAIN_TEXT, {"html": "<p>x</p>"}).status_code == 403
    assert not Message.objects.exists()


def test_marketing_finds_compose_on_the_admin_index(marketing):
    page = marketing.get(reverse("admin:index")).content.decode()

    assert ADD in page and CHANGELIST in page


def test_a_channel_the_user_may_not_use_is_refused_even_if_posted_by_hand(
    marketing, shop, role_user
):
    closed, _secret = channel_services.channel_create(name="Members only")
    closed.members.add(role_user("Marketing", username="insider"))

    form = marketing.get(ADD).content.decode()
    response = post(marketing, **ready(closed))

    assert "Members only" not in form and "Shop" in form
    assert "Select a valid choice" in errors(response)
    assert not Draft.objects.exists()


def test_a_draft_whose_channel_was_closed_to_the_user_is_not_sent(marketing, shop, role_user):
    post(marketing, **ready(shop))
    draft = Draft.objects.get()
    version = version_of(marketing.get(review_url(draft)))
    shop.members.add(role_user("Marketing", username="insider"))

    response = marketing.post(send_url(draft), {"version": version})

    assert "You may not send on this channel." in errors(response)
    assert not Message.objects.exists()


# --- preview -----------------------------------------------------------------------------------


def test_the_preview_is_a_sandboxed_frame_of_the_escaped_body(marketing, shop):
    post(marketing, **ready(shop, html='<p>Hi</p><script>alert("x")</script>'))

    page = marketing.get(change_url(Draft.objects.get())).content.decode()

    frame = re.search(r'<iframe id="compose-preview"[^>]*>', page)[0]
    assert 'sandbox=""' in frame
    assert 'srcdoc="&lt;p&gt;Hi&lt;/p&gt;&lt;script&gt;alert(&quot;x&quot;)' in frame
    assert "messaging/compose.js" in page
    assert '<pre id="compose-text">Hi</pre>' in page


def test_the_plain_text_endpoint_derives_the_text_part(marketing):
    response = marketing.post(
        PLAIN_TEXT, {"html": "<h1>Sale</h1><p>Up to 50% off<br>today</p><style>p{}</style>"}
    )

    assert response.json() == {"text": "Sale\nUp to 50% off\ntoday"}
    assert marketing.get(PLAIN_TEXT).status_code == 405


# --- attachments -------------------------------------------------------------------------------


def attach(client, url: str, channel, *files: tuple[str, bytes], **fields):
    uploads = [SimpleUploadedFile(name, content, "text/plain") for name, content in files]
    return client.post(
        url, {**BLANK, **ready(channel), **fields, "attachments": uploads, "_save": "1"}
    )


def test_attachments_are_kept_with_the_draft_and_end_up_on_the_message(
    marketing, shop, plain_server
):
    attach(marketing, ADD, shop, ("terms.txt", b"the terms"), ("prices.txt", b"the prices"))
    draft = Draft.objects.get()
    terms, prices = draft.materials.order_by("name").reverse()
    assert {terms.name, prices.name} == {"terms.txt", "prices.txt"}
    assert terms.channel == shop
    # The purge of expired materials leaves a draft's alone, however long it is kept.
    assert materials_purge(now=timezone.now() + timedelta(days=365)) == 0

    page = marketing.get(change_url(draft)).content.decode()
    assert "<li>terms.txt (9\xa0bytes)" in page
    attach(marketing, change_url(draft), shop, remove_materials=[prices.pk])
    assert list(draft.materials.values_list("name", flat=True)) == ["terms.txt"]

    confirm(marketing, draft)
    message = deliver(Message.objects.get())
    assert list(message.materials.values_list("name", flat=True)) == ["terms.txt"]
    mail = message_from_bytes(plain_server.recorder.messages[0].data)
    assert [part.get_filename() for part in mail.walk() if part.get_filename()] == ["terms.txt"]
    # Sent: the material now expires as an API upload does.
    terms.refresh_from_db()
    assert terms.expires_at < timezone.now() + timedelta(days=2)


def test_attachments_need_a_channel(marketing):
    response = marketing.post(
        ADD,
        {
            **BLANK,
            "attachments": [SimpleUploadedFile("a.txt", b"a")],
            "_save": "1",
        },
    )

    assert "Choose the channel before attaching files." in errors(response)
    assert not Material.objects.exists()


def test_an_attachment_over_the_size_limit_is_refused(marketing, shop, settings):
    settings.UMS_MATERIAL_MAX_BYTES = 10

    response = attach(marketing, ADD, shop, ("big.txt", b"x" * 11))

    assert "big.txt is larger than" in errors(response)
    assert not Material.objects.exists()


def test_deleting_a_draft_releases_its_attachments(marketing, shop):
    attach(marketing, ADD, shop, ("terms.txt", b"the terms"))
    draft = Draft.objects.get()

    marketing.post(reverse("admin:messaging_draft_delete", args=[draft.pk]), {"post": "yes"})

    assert not Draft.objects.exists()
    assert materials_purge(now=timezone.now() + timedelta(days=2)) == 1


def test_a_message_duplicated_as_a_draft_keeps_its_attachments(marketing, shop, author):
    attach(marketing, ADD, shop, ("terms.txt", b"the terms"))
    confirm(marketing, Draft.objects.get())
    message = Message.objects.get()
    Message.objects.filter(pk=message.pk).update(status=Message.Status.DONE)

    copy = draft_from_message(message=message, user=author)

    assert materials_purge(now=timezone.now() + timedelta(days=30)) == 0
    page = marketing.get(change_url(copy)).content.decode()
    assert "<li>terms.txt (9\xa0bytes)" in page and 'value="Spring sale"' in page

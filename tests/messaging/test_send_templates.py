"""Template sends through the pipeline: `{{userid}}` and `{{email}}` filled for each recipient
in the subject, the HTML (escaped) and the plain text, against a real SMTP server."""

from email import message_from_bytes
from email.header import decode_header, make_header

import pytest

from messaging import sending
from messaging.models import Message, MessageTemplate
from messaging.services import Audience, Content, Options, TemplateUse, message_create
from messaging.templating import message_template_save

pytestmark = pytest.mark.django_db


def run(message: Message) -> Message:
    for batch in sending.message_resolve(message_id=message.pk):
        sending.batch_send(message_id=message.pk, batch=batch)
    message.refresh_from_db()
    return message


def received(server) -> dict[str, dict[str, str]]:
    """Each recipient's subject, HTML and text as the server got them."""
    found = {}
    for item in server.recorder.messages:
        parsed = message_from_bytes(item.data)
        parts = {
            p.get_content_type(): p.get_payload(decode=True).decode()
            for p in parsed.walk()
            if not p.is_multipart()
        }
        found[item.rcpt_tos[0]] = {
            "subject": str(make_header(decode_header(parsed["Subject"]))),
            "html": parts.get("text/html", ""),
            "text": parts.get("text/plain", ""),
        }
    return found


def test_a_template_send_gives_each_recipient_their_own_userid_and_email(shop, bind, plain_server):
    bind("ann", "all", "ann@example.com")
    bind("bob<&>", "all", "bob@example.com")
    template = message_template_save(
        template=MessageTemplate(
            name="Welcome",
            subject="Hi {{userid}}, your {{item}}",
            html="<p>Dear {{ userid }} ({{email}}): {{item}}</p>",
        )
    )

    message, _created = message_create(
        channel=shop,
        audience=Audience(userids=["ann", "bob<&>"]),
        template=TemplateUse(template_id=template.pk, para={"item": "coupon"}),
        options=Options(),
        source="api",
    )
    message = run(message)

    assert message.personalized
    assert (message.status, message.sent) == ("done", 2)
    got = received(plain_server)
    assert got["ann@example.com"]["subject"] == "Hi ann, your coupon"
    assert got["bob@example.com"]["subject"] == "Hi bob<&>, your coupon"
    assert "<p>Dear ann (ann@example.com): coupon</p>" in got["ann@example.com"]["html"]
    assert (
        "<p>Dear bob&lt;&amp;&gt; (bob@example.com): coupon</p>" in got["bob@example.com"]["html"]
    )
    assert "Dear bob<&> (bob@example.com): coupon" in got["bob@example.com"]["text"]
    assert "{{" not in str(got)


def test_a_message_without_per_recipient_variables_is_the_same_for_everyone(
    shop, bind, plain_server
):
    bind("ann", "all", "ann@example.com")
    bind("bob", "all", "bob@example.com")

    message, _created = message_create(
        channel=shop,
        audience=Audience(userids=["ann", "bob"]),
        content=Content(subject="Hello {{userid}}", html="<p>Same {{email}}</p>"),
        options=Options(),
        source="api",
    )
    run(message)

    got = received(plain_server)
    assert not message.personalized
    assert {g["subject"] for g in got.values()} == {"Hello {{userid}}"}
    assert all("<p>Same {{email}}</p>" in g["html"] for g in got.values())


def test_a_raw_address_fills_userid_with_nothing(shop, plain_server):
    message, _created = message_create(
        channel=shop,
        audience=Audience(emails=["raw@example.com"]),
        content=Content(subject="For [{{userid}}] {{email}}", html="<p>x</p>", personalized=True),
        options=Options(),
        source="api",
    )
    run(message)

    assert received(plain_server)["raw@example.com"]["subject"] == "For [] raw@example.com"

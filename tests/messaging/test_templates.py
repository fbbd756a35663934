"""Templates: the renderer, per-recipient filling, saving, the console pages per role with their
live preview, and starting a compose draft from a template."""

import re

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from channels_app import services as channel_services
from messaging.models import Draft, Message, MessageTemplate
from messaging.services import Audience, Options, TemplateUse, message_create
from messaging.templating import (
    TemplateError,
    message_template_save,
    personalize,
    personalized_parts,
    template_for_message,
    template_render,
    template_variables,
)

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:messaging_messagetemplate_changelist")
ADD = reverse("admin:messaging_messagetemplate_add")
PREVIEW = reverse("admin:messaging_messagetemplate_preview")
COMPOSE = reverse("admin:messaging_draft_add")
FILL = reverse("admin:messaging_draft_template_fill")


def template(subject: str = "Hello {{name}}", html: str = "<p>Hi {{name}}</p>", **fields):
    """An unsaved template: the renderer needs only its subject and HTML."""
    return MessageTemplate(subject=subject, html=html, **fields)


def saved(name: str = "Welcome", subject="Hello {{name}}", html="<p>Hi {{name}}</p>", **fields):
    return message_template_save(
        template=MessageTemplate(name=name, subject=subject, html=html, **fields)
    )


def refused(call) -> TemplateError:
    with pytest.raises(TemplateError) as caught:
        call()
    return caught.value


def change_url(row: MessageTemplate) -> str:
    return reverse("admin:messaging_messagetemplate_change", args=[row.pk])


# --- placeholders -----------------------------------------------------------------------------


def test_placeholders_are_names_in_double_braces_with_optional_spaces():
    text = "{{a}} {{ b }} {{a}} {{\tc_1\n}} {{not a name}} {{d|upper}} {x} {{}}"

    assert template_variables(text) == ["a", "b", "c_1"]


def test_a_value_fills_every_occurrence_and_spaces_inside_the_braces_are_allowed():
    rendered = template_render(
        template=template("{{ name }}, {{name}}!", "<p>{{name}} {{  name  }}</p>"),
        para={"name": "Ann"},
    )

    assert (rendered.subject, rendered.html) == ("Ann, Ann!", "<p>Ann Ann</p>")
    assert rendered.personalized is False


def test_values_are_html_escaped_in_the_body():
    rendered = template_render(
        template=template(html='<a title="{{name}}">{{name}}</a>'),
        para={"name": "<script>alert('x')</script> & \"Co\""},
    )

    assert rendered.html == (
        '<a title="&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;Co&quot;">'
        "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;Co&quot;</a>"
    )


def test_the_templates_own_html_is_not_escaped():
    rendered = template_render(
        template=template(html="<b>{{name}}</b> &amp; co"), para={"name": "A"}
    )

    assert rendered.html == "<b>A</b> &amp; co"


def test_the_subject_is_not_escaped_but_loses_line_breaks_and_control_characters():
    rendered = template_render(
        template=template(subject="Re: {{name}} <offer>"),
        para={"name": "Ann & Bob\r\nBcc: evil@example.com\x00\x1b\u2028!"},
    )

    assert rendered.subject == "Re: Ann & BobBcc: evil@example.com! <offer>"


def test_a_missing_variable_is_4004_naming_it():
    error = refused(
        lambda: template_render(
            template=template(html="{{name}} {{coupon}}"), para={"name": "Ann", "other": 1}
        )
    )

    assert error.code == 4004
    assert error.message.startswith("template_para.coupon: ")


def test_a_null_value_counts_as_missing():
    error = refused(lambda: template_render(template=template(), para={"name": None}))

    assert error.message.startswith("template_para.name: ")


def test_extra_values_are_ignored():
    rendered = template_render(template=template(), para={"name": "Ann", "unused": [1, 2]})

    assert rendered.subject == "Hello Ann"


@pytest.mark.parametrize("value", [["a"], {"a": 1}, True, float("nan"), float("inf")])
def test_a_value_that_is_not_a_string_or_a_number_is_4004_naming_it(value):
    error = refused(lambda: template_render(template=template(), para={"name": value}))

    assert (error.code, error.message) == (4004, "template_para.name: must be a string or a number")


def test_numbers_are_written_as_numbers():
    rendered = template_render(
        template=template(html="{{n}} {{price}}"), para={"n": 3, "price": 9.5, "name": "x"}
    )

    assert rendered.html == "3 9.5"


def test_template_para_must_be_an_object():
    error = refused(lambda: template_render(template=template(), para=["Ann"]))

    assert (error.code, error.message) == (4004, "template_para: must be an object")


def test_a_template_without_variables_needs_no_values():
    rendered = template_render(template=template("Hi", "<p>Hi</p>"), para=None)

    assert (rendered.subject, rendered.html) == ("Hi", "<p>Hi</p>")


def test_a_subject_longer_than_998_characters_once_filled_is_4004():
    error = refused(lambda: template_render(template=template(), para={"name": "x" * 993}))

    assert error.message.startswith("template_para: the subject would be longer than 998")
    assert (
        template_render(template=template(), para={"name": "x" * 992}).subject
        == "Hello " + "x" * 992
    )


def test_userid_and_email_are_kept_for_each_recipient_and_the_result_says_so():
    rendered = template_render(
        template=template("For {{ userid }}", "<p>{{name}}: {{email}} / {{userid}}</p>"),
        para={"name": "Ann", "userid": "ignored", "email": "ignored"},
    )

    assert rendered.subject == "For {{userid}}"
    assert rendered.html == "<p>Ann: {{email}} / {{userid}}</p>"
    assert rendered.personalized is True


def test_a_value_cannot_smuggle_a_per_recipient_placeholder_into_the_body():
    rendered = template_render(
        template=template(html="{{name}} {{email}}"), para={"name": "{{userid}}"}
    )

    filled = personalize(text=rendered.html, userid="u1", email="ann@example.com", html=True)

    assert filled == "&#123;&#123;userid}} ann@example.com"


# --- per recipient ----------------------------------------------------------------------------


def test_personalize_fills_userid_and_email_escaped_in_html():
    text = "<p>{{userid}} {{email}} {{userid}}</p>"

    filled = personalize(text=text, userid="a&b<", email="o'neil@example.com", html=True)

    assert filled == "<p>a&amp;b&lt; o&#x27;neil@example.com a&amp;b&lt;</p>"


def test_personalize_fills_the_subject_and_text_as_written_without_control_characters():
    filled = personalize(
        text="Hi {{userid}} <{{email}}>", userid="a&b\r\n", email="x@y.z", html=False
    )

    assert filled == "Hi a&b <x@y.z>"


def test_personalize_leaves_other_placeholders_and_a_text_without_any_alone():
    text = "{{name}} {{ userid }} no braces"
    assert personalize(text=text, userid="u", email="e", html=True) == text
    plain = "nothing to fill"
    assert personalize(text=plain, userid="u", email="e", html=True) is plain


def test_a_raw_address_has_an_empty_userid():
    assert (
        personalize(text="[{{userid}}] {{email}}", userid="", email="a@b.c", html=False)
        == "[] a@b.c"
    )


def test_personalized_parts_fill_subject_html_and_text_of_a_message():
    message = Message(subject="For {{userid}}", html="<p>{{email}}</p>", text="{{email}}")

    parts = personalized_parts(message=message, userid="u&1", email="ann@example.com")

    assert parts == ("For u&1", "<p>ann@example.com</p>", "ann@example.com")


# --- saving -----------------------------------------------------------------------------------


def test_saving_keeps_the_variables_in_step_with_subject_and_html():
    row = saved(subject="{{ name }}, for you", html="<p>{{coupon}} {{name}} {{email}}</p>")
    assert row.variables == ["name", "coupon", "email"]

    row.html = "<p>{{discount}}</p>"
    message_template_save(template=row)

    row.refresh_from_db()
    assert row.variables == ["name", "discount"]


@pytest.mark.parametrize(
    ("subject", "html", "field", "shown"),
    [
        ("Hi", "<p>{{ first name }}</p>", "html", "{{ first name }}"),
        ("Hi", "<p>{{name|upper}}</p>", "html", "{{name|upper}}"),
        ("Hi {{#if vip}}", "<p>x</p>", "subject", "{{#if vip}}"),
        ("Hi", "<p>{{ unclosed</p>", "html", "{{"),
        ("Line\nbreak", "<p>x</p>", "subject", "Line breaks"),
    ],
)
def test_saving_refuses_what_is_not_a_placeholder(subject, html, field, shown):
    with pytest.raises(ValidationError) as caught:
        saved(subject=subject, html=html)

    assert shown in " ".join(caught.value.message_dict[field])
    assert not MessageTemplate.objects.exists()


def test_style_sheets_closing_nested_rules_are_fine():
    row = saved(html="<style>@media (max-width: 600px) { .a { color: red }}</style>{{name}}")

    assert row.variables == ["name"]


# --- which template a send may use ------------------------------------------------------------


@pytest.fixture
def channels(db):
    return channel_services.channel_create(name="Shop")[0], channel_services.channel_create(
        name="Games"
    )[0]


def test_a_template_serves_its_channel_or_every_channel_without_one(channels):
    shop, games = channels
    own, shared = saved(channel=shop), saved(name="Shared")

    assert template_for_message(channel=shop, template_id=own.pk) == own
    assert template_for_message(channel=games, template_id=shared.pk) == shared


def test_unknown_disabled_and_other_channels_templates_are_refused_with_their_codes(channels):
    shop, games = channels
    disabled, theirs = saved(is_enabled=False), saved(channel=games)

    assert refused(lambda: template_for_message(channel=shop, template_id=999_999)).code == 1015031
    assert (
        refused(lambda: template_for_message(channel=shop, template_id=disabled.pk)).code == 1015032
    )
    error = refused(lambda: template_for_message(channel=shop, template_id=theirs.pk))
    assert error.code == 1015032 and "another channel" in error.message


# --- the console: list, pages per role, preview -----------------------------------------------


@pytest.fixture
def login(client, role_user):
    def as_role(role: str | None):
        client.force_login(role_user(role))
        return client

    return as_role


def test_marketing_lists_templates_with_their_variables_and_usage(login, shop):
    used = saved(name="Spring", subject="{{name}}", html="<p>{{coupon}} {{userid}}</p>")
    saved(name="Unused", html="<p>Hi</p>", subject="Hi", channel=shop)
    for _ in range(2):
        message_create(
            channel=shop,
            audience=Audience(emails=["ann@example.com"]),
            template=TemplateUse(template_id=used.pk, para={"name": "A", "coupon": "C"}),
            options=Options(),
            source=Message.Source.API,
        )

    page = login("Marketing").get(CHANGELIST).content.decode()

    row = re.search(r"<tr>.*?Spring.*?</tr>", page, re.S)[0]
    assert "{{name}}, {{coupon}}" in row and "per recipient: {{userid}}" in row
    assert '<td class="field-usage">2</td>' in row
    unused = re.search(r"<tr>.*?Unused.*?</tr>", page, re.S)[0]
    assert '<td class="field-usage">0</td>' in unused and "Shop" in unused


def test_marketing_adds_a_template_and_its_variables_are_stored(login):
    client = login("Marketing")

    response = client.post(
        ADD,
        {
            "name": "Welcome",
            "channel": "",
            "is_enabled": "on",
            "subject": "Welcome, {{ name }}",
            "html": "<p>Your code: {{code}}</p>",
            "sample.name": "ignored",
        },
    )

    assert response.status_code == 302, response.content
    row = MessageTemplate.objects.get()
    assert row.variables == ["name", "code"]
    assert row.created_by.username == "marketing"


def test_a_stray_placeholder_is_shown_on_the_form_and_nothing_is_saved(login):
    response = login("Marketing").post(
        ADD, {"name": "Bad", "subject": "Hi", "html": "<p>{{ first name }}</p>", "is_enabled": "on"}
    )

    assert response.status_code == 200
    assert "{{ first name }} is not a placeholder" in response.content.decode()
    assert not MessageTemplate.objects.exists()


def test_the_change_page_shows_the_preview_rendered_with_placeholders_for_missing_samples(login):
    row = saved(subject="Hi {{name}}", html="<p>{{name}} & {{email}}</p>")

    page = login("Marketing").get(change_url(row)).content.decode()

    assert 'sandbox=""' in page and 'id="template-preview-frame"' in page
    # The srcdoc attribute holds the rendered HTML, escaped once more as an attribute.
    srcdoc = re.search(r'id="template-preview-frame"[^>]*srcdoc="([^"]*)"', page)[1]
    assert srcdoc == "&lt;p&gt;&amp;#123;&amp;#123;name}} &amp; {{email}}&lt;/p&gt;"
    assert 'name="sample.name"' in page and 'name="sample.email"' in page
    assert "messaging/templates.js" in page


def test_the_preview_renders_samples_through_the_same_renderer(login):
    client = login("Marketing")

    answer = client.post(
        PREVIEW,
        {
            "subject": "Hi {{name}}\r\n",
            "html": "<p>{{name}} {{coupon}} {{userid}}</p>",
            "sample.name": "<Ann>",
            "sample.userid": "u&1",
        },
    ).json()

    assert answer["subject"] == "Hi <Ann>"
    assert answer["html"] == "<p>&lt;Ann&gt; &#123;&#123;coupon}} u&amp;1</p>"
    assert answer["variables"] == ["name", "coupon", "userid"]
    assert answer["problems"] == {}


def test_the_preview_reports_what_saving_would_refuse(login):
    answer = login("Marketing").post(PREVIEW, {"subject": "Hi", "html": "{{x|upper}}"}).json()

    assert "{{x|upper}} is not a placeholder" in answer["problems"]["html"]


def test_a_reviewer_views_templates_and_their_preview_but_cannot_change_them(login):
    row = saved(subject="Hi {{name}}", html="<p>{{name}}</p>")
    client = login("Reviewer")

    assert client.get(CHANGELIST).status_code == 200
    page = client.get(change_url(row))
    assert page.status_code == 200
    content = page.content.decode()
    assert (
        'id="template-preview-frame"' in content
        and 'data-html="&lt;p&gt;{{name}}&lt;/p&gt;"' in content
    )
    assert '<textarea name="html"' not in content
    assert client.post(PREVIEW, {"subject": "x", "html": "{{a}}"}).json()["variables"] == ["a"]
    assert client.get(ADD).status_code == 403
    client.post(
        change_url(row), {"name": "Hijacked", "subject": "x", "html": "y", "is_enabled": "on"}
    )
    row.refresh_from_db()
    assert row.name == "Welcome"


def test_a_channel_admin_has_no_template_pages(login):
    row = saved()
    client = login("Channel admin")

    assert client.get(CHANGELIST).status_code == 403
    assert client.get(change_url(row)).status_code == 403
    assert client.post(PREVIEW, {"subject": "x", "html": "y"}).status_code == 403


def test_the_preview_takes_only_post(login):
    assert login("Marketing").get(PREVIEW).status_code == 405


# --- compose from a template ------------------------------------------------------------------


def test_the_compose_page_offers_the_enabled_templates_with_their_variables(login, shop):
    saved(name="Spring", subject="{{name}}", html="<p>{{coupon}} {{email}}</p>", channel=shop)
    saved(name="Old", is_enabled=False)

    page = login("Marketing").get(COMPOSE).content.decode()

    option = re.search(r'<option value="\d+"[^>]*>Spring \(Shop\)</option>', page)[0]
    assert f'data-channel="{shop.pk}"' in option
    assert 'data-variables="name,coupon"' in option and 'data-per-recipient="email"' in option
    assert ">Old<" not in page


def test_filling_from_a_template_renders_the_typed_values_escaped(login, shop):
    row = saved(subject="Hi {{name}}", html="<p>{{name}}, {{userid}}</p>", channel=shop)

    answer = (
        login("Marketing")
        .post(FILL, {"template": row.pk, "channel": shop.pk, "para.name": "Ann & <Bob>"})
        .json()
    )

    assert answer == {
        "subject": "Hi Ann & <Bob>",
        "html": "<p>Ann &amp; &lt;Bob&gt;, {{userid}}</p>",
        "text": "Ann & <Bob>, {{userid}}",
        "personalized": True,
    }


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({}, "Give a value for name, code."),
        ({"para.name": "Ann", "para.code": "  "}, "Give a value for code."),
    ],
)
def test_filling_needs_a_value_for_each_variable(login, shop, values, error):
    row = saved(subject="Hi {{name}}", html="<p>{{code}}</p>")

    response = login("Marketing").post(FILL, {"template": row.pk, "channel": shop.pk, **values})

    assert response.status_code == 400 and response.json() == {"error": error}


def test_filling_refuses_another_channels_or_a_disabled_template(login, shop):
    games = channel_services.channel_create(name="Games")[0]
    theirs, disabled = saved(name="Theirs", channel=games), saved(name="Off", is_enabled=False)
    client = login("Marketing")

    mismatch = client.post(FILL, {"template": theirs.pk, "channel": shop.pk, "para.name": "A"})
    off = client.post(FILL, {"template": disabled.pk, "para.name": "A"})
    unknown = client.post(FILL, {"template": "999999"})

    assert mismatch.json()["error"] == "The template Theirs belongs to another channel."
    assert off.json()["error"] == "The template Off is disabled."
    assert unknown.json()["error"] == "Choose a template."


def test_filling_needs_the_compose_permission(login):
    row = saved()

    assert login("Reviewer").post(FILL, {"template": row.pk, "para.name": "A"}).status_code == 403


def test_filling_needs_the_right_to_see_templates(client, django_user_model):
    from django.contrib.auth.models import Permission

    row = saved()
    user = django_user_model.objects.create_user("sender", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            codename__in=["add_message", "view_message", "add_draft", "change_draft", "view_draft"]
        )
    )
    client.force_login(user)

    assert client.post(FILL, {"template": row.pk, "para.name": "A"}).status_code == 403
    assert client.get(reverse("admin:messaging_draft_add")).context["templates"] == []


BLANK = {
    "channel": "",
    "audience_kind": "email",
    "userids": "",
    "tags": "",
    "emails": "ann@example.com",
    "subject": "",
    "from_name": "",
    "reply_to": "",
    "html": "",
    "priority": "2",
    "send_at": "",
}


def test_a_draft_filled_from_a_template_is_sent_personalized(login, shop):
    row = saved(subject="Hi {{name}}", html="<p>{{name}}, your id is {{userid}}</p>", channel=shop)
    client = login("Marketing")
    filled = client.post(FILL, {"template": row.pk, "channel": shop.pk, "para.name": "Ann"}).json()

    client.post(
        COMPOSE,
        {
            **BLANK,
            "channel": shop.pk,
            "subject": filled["subject"],
            "html": filled["html"],
            "_save": "1",
        },
    )
    draft = Draft.objects.get()
    review = client.get(reverse("admin:messaging_draft_review", args=[draft.pk])).content.decode()
    version = re.search(r'name="version" value="([^"]+)"', review)[1]
    response = client.post(
        reverse("admin:messaging_draft_send", args=[draft.pk]), {"version": version}
    )

    message = Message.objects.get()
    assert response.status_code == 302
    assert (message.subject, message.html) == ("Hi Ann", "<p>Ann, your id is {{userid}}</p>")
    assert message.personalized is True
    assert message.text == "Ann, your id is {{userid}}"


def test_a_draft_without_per_recipient_variables_is_not_personalized(login, shop):
    client = login("Marketing")
    client.post(
        COMPOSE, {**BLANK, "channel": shop.pk, "subject": "Hi", "html": "<p>Hi</p>", "_save": "1"}
    )
    draft = Draft.objects.get()
    review = client.get(reverse("admin:messaging_draft_review", args=[draft.pk])).content.decode()
    version = re.search(r'name="version" value="([^"]+)"', review)[1]

    client.post(reverse("admin:messaging_draft_send", args=[draft.pk]), {"version": version})

    assert Message.objects.get().personalized is False


def test_a_placeholder_left_unfilled_keeps_the_draft_from_being_sent(login, shop):
    client = login("Marketing")

    response = client.post(
        COMPOSE,
        {
            **BLANK,
            "channel": shop.pk,
            "subject": "Hi {{name}}",
            "html": "<p>{{coupon}} {{email}}</p>",
            "_review": "1",
        },
    )

    page = response.content.decode()
    assert response.status_code == 200
    assert "{{name}} would reach the recipients as written" in page
    assert "{{coupon}} would reach the recipients as written" in page
    assert "{{email}} would" not in page
    assert not Message.objects.exists()
    # Saving it as a draft is still possible.
    client.post(COMPOSE, {**BLANK, "subject": "Hi {{name}}", "_save": "1"})
    assert Draft.objects.get().subject == "Hi {{name}}"

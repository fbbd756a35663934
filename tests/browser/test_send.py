"""Marketing composes and sends in the browser and follows the message to each recipient's result.

Real parts throughout: the live server, a Celery worker process on the test database, and an
SMTP server that the channel's sender delivers to.
"""

import re

import pytest
from playwright.sync_api import Page, expect

from channels_app import services as channel_services
from messaging.models import Delivery, Message
from tests.browser.steps import log_in, open_from_home
from tests.processes import celery_worker, child_env
from users_app.models import UmsUser, UserEmailBinding

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]

BODY = "<h1>Spring sale</h1><p>Hello <b>friend</b>, everything is 20% off this week.</p>"


@pytest.fixture
def shop(plain_server, make_sender):
    """A channel whose default sender delivers to the test SMTP server, and three users."""
    channel, _secret = channel_services.channel_create(name="Shop")
    sender = make_sender(plain_server, account="", password="", name="Shop mail", from_name="Shop")
    channel_services.channel_authorize_sender(channel=channel, sender=sender, is_default=True)
    for userid, email in [("zhangsan", "zs@example.com"), ("lisi", "ls@example.com")]:
        user = UmsUser.objects.create(userid=userid)
        UserEmailBinding.objects.create(user=user, bind_id="all", email=email)
    UmsUser.objects.create(userid="nobody")  # no address: an invalid target
    return channel


def compose(page: Page) -> None:
    open_from_home(page, "Compose / drafts")
    page.get_by_role("link", name="Compose a new email").click()
    page.get_by_label("Channel:", exact=True).select_option(label="Shop")
    page.get_by_role("radio", name="Userids").check()
    page.get_by_label("Userids:", exact=True).fill("zhangsan\nlisi\nnobody")
    page.get_by_label("Subject:", exact=True).fill("Spring sale")
    page.get_by_label("Body (HTML):", exact=True).fill(BODY)


@pytest.fixture
def worker_log(tmp_path):
    """The worker's log file; its end is printed, and so shown when the test fails."""
    log = tmp_path / "worker.log"
    yield log
    if log.exists():
        print(log.read_text(errors="replace")[-3000:])


@pytest.mark.timeout(300)
def test_marketing_composes_sends_and_sees_each_recipients_result(
    page, role_user, shop, plain_server, worker_log, screenshot
):
    role_user("Marketing", username="marketing")
    log = worker_log

    # The live server queues on the test settings' file-system broker, which the worker reads.
    with celery_worker(child_env(), log):
        log_in(page, "marketing")
        compose(page)

        preview = page.frame_locator("#compose-preview")
        expect(preview.get_by_role("heading", name="Spring sale")).to_be_visible()
        expect(preview.locator("b")).to_have_text("friend")
        expect(page.locator("#compose-preview-subject")).to_have_text("Spring sale")
        expect(page.locator("#compose-text")).to_contain_text("Hello friend, everything is 20% off")
        screenshot(page, "compose", full_page=True)

        page.get_by_role("button", name="Send a test to me").click()
        expect(page.get_by_text("A test was sent to staff@example.com only.")).to_be_visible()
        page.get_by_role("link", name="Follow it").click()
        expect(page.locator("#message-progress [data-field='done_percent']")).to_have_text(
            "100%", timeout=120_000
        )
        expect(page.locator("#message-summary tr", has_text="test send")).to_contain_text("yes")
        expect(page.locator("#message-progress [data-count='total']")).to_have_text("1")
        page.go_back()
        expect(page.get_by_label("Subject:", exact=True)).to_have_value("Spring sale")

        page.get_by_role("button", name="Review and send").click()
        expect(page.get_by_role("heading", name="Review and send")).to_be_visible()
        expect(page.locator("#review-total")).to_have_text("3")
        expect(page.locator("#review-with-address")).to_have_text("2")
        expect(page.locator("#review-without-address")).to_have_text("1")
        expect(page.locator("#review-sender")).to_have_text("Shop mail")
        screenshot(page, "compose-review")

        page.get_by_role("button", name="Confirm send").click()
        message = Message.objects.get(subject="Spring sale", is_test=False)
        expect(page.get_by_text(f"Message {message.msgid} is on its way.")).to_be_visible()
        expect(page).to_have_url(re.compile(rf"/admin/messaging/message/{message.pk}/change/"))

        # The page asks the server for progress while the worker sends.
        progress = page.locator("#message-progress")
        expect(progress.locator("[data-field='done_percent']")).to_have_text(
            "100%", timeout=120_000
        )
        expect(progress.locator("[data-count='sent']")).to_have_text("2")
        expect(progress.locator("[data-count='invalid']")).to_have_text("1")
        expect(page.locator("#message-summary [data-status]")).to_have_text("Done")
        page.get_by_role(
            "link", name="Reload the page to see every recipient's final result."
        ).click()

    deliveries = page.locator("#deliveries tbody tr")
    expect(deliveries).to_have_count(3)
    zhangsan = deliveries.filter(has_text="zs@example.com")
    expect(zhangsan).to_contain_text("Sent")
    expect(zhangsan).to_contain_text("250")
    expect(deliveries.filter(has_text="nobody")).to_contain_text("Invalid target")
    screenshot(page, "message", full_page=True)

    zhangsan.get_by_role("link").first.click()
    expect(page.locator(".field-email")).to_contain_text("zs@example.com")
    expect(page.locator(".field-smtp_code")).to_contain_text("250")
    expect(page.locator(".field-smtp_reply")).to_contain_text("Ok: queued as TEST1")

    open_from_home(page, "Messages")
    test_send = Message.objects.get(is_test=True)
    expect(page.locator("#result_list tbody tr")).to_have_count(2)
    row = page.get_by_role("row", name=re.compile(message.msgid))
    expect(row).to_contain_text("Spring sale")
    expect(row).to_contain_text("100%")
    expect(row).to_contain_text("Done")
    expect(page.get_by_role("row", name=re.compile(test_send.msgid))).to_contain_text("test")
    # Finding the messages that went to one person: the test send did not go to lisi.
    page.locator("#changelist-search").get_by_role("textbox").fill("ls@example.com")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.get_by_role("link", name=message.msgid)).to_be_visible()

    open_from_home(page, "Messages")
    screenshot(page, "history", width=1700)  # the list with its filters needs the width
    page.goto("/admin/")
    screenshot(page, "dashboard", full_page=True)

    assert sorted(m.rcpt_tos[0] for m in plain_server.recorder.messages) == [
        "ls@example.com",
        "staff@example.com",
        "zs@example.com",
    ]
    assert Delivery.objects.get(email="zs@example.com").smtp_code == 250

"""Staff log in through the console's login form."""

import pytest
from playwright.sync_api import expect

from tests.browser.steps import log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_staff_log_in_through_the_login_form_and_out_again(page, role_user):
    role_user(None, username="admin")

    page.goto("/admin/")
    expect(page).to_have_url("/admin/login/?next=/admin/")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_text("Please enter the correct username and password")).to_be_visible()

    log_in(page, "admin")
    expect(page.get_by_role("link", name="Email senders", exact=True)).to_be_visible()

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_text("Logged out")).to_be_visible()
    page.goto("/admin/")
    expect(page.get_by_role("button", name="Log in")).to_be_visible()

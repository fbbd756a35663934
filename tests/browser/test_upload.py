"""A data admin loads users from a spreadsheet in the browser: upload, preview, confirm."""

import pytest
from playwright.sync_api import Page, expect

from channels_app import services as channel_services
from tests.browser.steps import log_in, open_from_home
from tests.users_app.files import write, xlsx_bytes
from users_app.models import UmsUser, UserEmailBinding

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def upload(page: Page, path, *, bind_to: str) -> None:
    open_from_home(page, "Binding uploads")
    page.get_by_role("link", name="Upload spreadsheet").click()
    page.get_by_label("Spreadsheet").set_input_files(path)
    page.get_by_label("Bind to").select_option(label=bind_to)
    page.get_by_role("button", name="Upload and check").click()


def count(page: Page, label: str):
    return (
        page.locator("#job-counts tr").filter(has=page.get_by_text(label, exact=True)).locator("td")
    )


def test_a_data_admin_uploads_a_spreadsheet_sees_the_preview_and_confirms(
    page, role_user, tmp_path, screenshot
):
    shop, _secret = channel_services.channel_create(name="Shop")
    role_user("Data admin", username="dataadmin")
    workbook = xlsx_bytes(
        [
            ["zhangsan", "zs@example.com", "", "vip"],
            ["lisi", "ls@example.com", "", ""],
            ["wangwu", "ww@example.com", "all", "vip,new"],
        ]
    )
    log_in(page, "dataadmin")

    upload(page, write(tmp_path, "customers.xlsx", workbook), bind_to=f"Shop ({shop.channel_key})")

    expect(page.get_by_role("heading", name="Ready to confirm")).to_be_visible()
    expect(count(page, "Rows")).to_have_text("3")
    expect(count(page, "New bindings")).to_have_text("3")
    expect(count(page, "Rejected rows")).to_have_text("0")
    assert not UmsUser.objects.exists()  # nothing is written before the confirmation
    screenshot(page, "upload-preview")

    page.get_by_role("button", name="Confirm import").click()
    expect(page.get_by_text("Imported: 3 rows, 3 new and 0 changed bindings.")).to_be_visible()
    page.get_by_role("link", name="See the users").click()
    for userid, email in [
        ("zhangsan", "zs@example.com"),
        ("lisi", "ls@example.com"),
        ("wangwu", "ww@example.com"),
    ]:
        expect(page.get_by_role("row", name=userid)).to_contain_text(email)
    assert set(UserEmailBinding.objects.values_list("user__userid", "bind_id")) == {
        ("zhangsan", shop.channel_key),
        ("lisi", shop.channel_key),
        ("wangwu", "all"),
    }


def test_an_upload_with_a_bad_row_shows_the_row_and_imports_nothing(page, role_user, tmp_path):
    role_user("Data admin", username="dataadmin")
    workbook = xlsx_bytes(
        [["zhangsan", "zs@example.com", "", ""], ["lisi", "not-an-address", "", ""]]
    )
    log_in(page, "dataadmin")

    upload(page, write(tmp_path, "customers.xlsx", workbook), bind_to="all (every channel)")

    expect(count(page, "Rejected rows")).to_have_text("1")
    rejected = page.locator("#job-errors tbody tr")
    expect(rejected).to_have_count(1)
    expect(rejected).to_contain_text("not-an-address")
    expect(page.get_by_role("button", name="Confirm import")).to_have_count(0)
    page.get_by_role("button", name="Discard this upload").click()
    expect(page.get_by_text("The upload was discarded; nothing was imported.")).to_be_visible()
    assert not UmsUser.objects.exists()

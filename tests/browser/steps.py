"""What a person does in the console, as steps the browser tests share."""

from playwright.sync_api import Page, expect

PASSWORD = "pw"  # the password the role_user fixture gives every staff user


def log_in(page: Page, username: str, password: str = PASSWORD) -> None:
    """Opens the console and logs in through the admin login form."""
    page.goto("/admin/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Channels, senders and messages")).to_be_visible()


def open_from_home(page: Page, link: str) -> None:
    """From the console's home page, follows a link of the list of apps and models."""
    page.goto("/admin/")
    page.get_by_role("link", name=link, exact=True).click()

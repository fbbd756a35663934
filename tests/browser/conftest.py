"""Browser tests: Playwright drives the system Chromium against a live server.

Without Chromium at /usr/bin/chromium the tests are skipped with the reason; with
UMS_REQUIRE_BROWSER=1 (CI) that is a failure instead. Playwright never downloads a browser here.
UMS_SCREENSHOTS=1 saves the screenshots of the main pages into docs/screenshots/.
"""

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connections
from django.db.models import Q
from playwright.sync_api import Browser, Page, expect, sync_playwright
from pytest_django.plugin import blocking_manager_key

from tests.processes import ROOT
from ums.roles import ROLES

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
REQUIRE_BROWSER = os.environ.get("UMS_REQUIRE_BROWSER") == "1"
SCREENSHOTS = os.environ.get("UMS_SCREENSHOTS") == "1"
SCREENSHOT_DIR = ROOT / "docs" / "screenshots"

# Auto-waiting assertions give a page this long to show what is expected.
expect.set_options(timeout=10_000)


def chromium_missing() -> str:
    if not CHROMIUM.exists():
        return f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is not executable"
    return ""


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Browser]:
    """The system Chromium, started for one test.

    Playwright's sync API keeps an asyncio loop running in this thread while it is started, so
    Django would refuse ORM calls from the test; the test's own queries run between browser
    steps, never concurrently with them, which is what DJANGO_ALLOW_ASYNC_UNSAFE allows. Starting
    and stopping per test leaves no loop behind for the tests that follow.
    """
    reason = chromium_missing()
    if reason:
        if REQUIRE_BROWSER:
            pytest.fail(f"{reason} (UMS_REQUIRE_BROWSER=1)")
        pytest.skip(reason)
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()
            # While the loop runs, Django hands this thread other connections than before (its
            # connection registry follows the asyncio context): close them before the loop goes.
            connections.close_all()


def roles_create() -> None:
    """The role groups with their permissions, as the data migrations leave them."""
    for role, dotted in ROLES.items():
        group, _created = Group.objects.get_or_create(name=role)
        wanted = Q(pk__in=[])
        for name in dotted:
            app_label, codename = name.split(".")
            wanted |= Q(content_type__app_label=app_label, codename=codename)
        group.permissions.set(Permission.objects.filter(wanted))


@pytest.fixture
def staff_roles(transactional_db) -> None:
    """The role groups, which the flush after a transactional test run before may have removed.

    (The flush recreates the permissions, not the groups.)
    """
    roles_create()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    """After the flush that ends each of these tests, the role groups are put back for the tests
    that follow, which expect the database as migrated."""
    result = yield
    if nextitem is not None:  # after the last test, the test database is gone
        with item.config.stash[blocking_manager_key].unblock():
            roles_create()
    return result


@pytest.fixture
def role_user(staff_roles, role_user):
    """tests/conftest.py's staff users, once the role groups exist."""
    return role_user


@pytest.fixture
def new_page(browser: Browser, live_server, staff_roles) -> Callable[[], Page]:
    """Opens a page in a fresh browser session (its own cookies) on the live server."""

    def make() -> Page:
        context = browser.new_context(
            base_url=live_server.url, viewport=VIEWPORT, locale="en-US", timezone_id="UTC"
        )
        context.set_default_timeout(15_000)
        return context.new_page()

    return make


@pytest.fixture
def page(new_page: Callable[[], Page]) -> Page:
    return new_page()


@pytest.fixture
def screenshot() -> Callable[..., None]:
    """Saves the page as docs/screenshots/<name>.png, only when UMS_SCREENSHOTS=1 asks for it."""

    def save(page: Page, name: str, *, full_page: bool = False, width: int = 0) -> None:
        if not SCREENSHOTS:
            return
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        size = {"width": width or VIEWPORT["width"], "height": VIEWPORT["height"]}
        page.set_viewport_size(size)
        if full_page:
            # Chromium paints a sandboxed iframe (the email previews) only inside the viewport,
            # so a whole-page picture is taken with a viewport as tall as the page.
            size["height"] = page.evaluate("() => document.documentElement.scrollHeight")
            page.set_viewport_size(size)
        try:
            page.evaluate("() => new Promise(done => requestAnimationFrame(() => done()))")
            page.screenshot(path=str(SCREENSHOT_DIR / f"{name}.png"))
        finally:
            page.set_viewport_size(VIEWPORT)

    return save

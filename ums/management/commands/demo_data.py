"""Load the demo: role users, a demo channel and a sender that delivers to the mail catcher."""

import json
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from channels_app import services
from channels_app.models import Channel, EmailSender
from messaging.models import Message
from messaging.services import Audience, Content, Options, message_create
from users_app.models import UmsUser
from users_app.operations import UserChanges, user_changes_apply

CREDENTIALS_FILE = Path(settings.VAR_DIR) / "demo-credentials.json"
# Customers of the demo shop: every one has an address for all channels, some a shop-only one
# (which wins when the shop sends), and tags to send to a group.
DEMO_CUSTOMERS = 24
DEMO_TAGS = ("vip", "newsletter", "beijing", "shanghai")
DEMO_USERS = {
    "admin": None,
    "channeladmin": "Channel admin",
    "dataadmin": "Data admin",
    "marketing": "Marketing",
    "reviewer": "Reviewer",
}


class Command(BaseCommand):
    help = "Create (or refresh) the demo users, channel and local sender; prints the logins."

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        password = self._password()
        for username, role in DEMO_USERS.items():
            self._user(username, role, password)
        channel = self._channel()
        self._audience(channel)
        self._first_messages(channel)
        self.stdout.write(self.style.SUCCESS("Demo data ready."))
        self.stdout.write("  Console:  http://127.0.0.1:8000/admin/")
        self.stdout.write(
            f"  Log in:   admin / {password}   (also channeladmin, dataadmin, marketing, reviewer)"
        )
        self.stdout.write(f"  Channel:  {channel.name}  ChannelKey {channel.channel_key}")

    def _password(self) -> str:
        if CREDENTIALS_FILE.exists():
            return json.loads(CREDENTIALS_FILE.read_text())["password"]
        password = secrets.token_urlsafe(9)
        CREDENTIALS_FILE.parent.mkdir(parents=True, exist_ok=True)
        CREDENTIALS_FILE.write_text(json.dumps({"password": password}))
        CREDENTIALS_FILE.chmod(0o600)
        return password

    def _user(self, username: str, role: str | None, password: str) -> None:
        user, _created = get_user_model().objects.get_or_create(
            username=username, defaults={"email": f"{username}@example.com"}
        )
        user.is_staff = True
        user.is_superuser = role is None
        user.set_password(password)
        user.save()
        if role:
            user.groups.set([Group.objects.get(name=role)])

    def _channel(self) -> Channel:
        sender = EmailSender.objects.filter(code="LOCALCATCHER").first()
        if sender is None:
            sender = services.sender_create(
                name="Local mail catcher",
                code="LOCALCATCHER",
                host="127.0.0.1",
                port=settings.UMS_MAILCATCHER_PORT,
                encryption="none",
                from_address="noreply@demo.example.com",
                from_name="UMS Demo",
                port_exception_reason="The local mail catcher of the development setup.",
            )
            services.sender_approve_port_exception(sender=sender, user=None)
        channel = Channel.objects.filter(name="Demo shop").first()
        if channel is None:
            channel, _secret = services.channel_create(
                name="Demo shop", description="A demo business line; mail goes to the mail catcher."
            )
            services.channel_authorize_sender(channel=channel, sender=sender, is_default=True)
        return channel

    def _audience(self, channel: Channel) -> None:
        if UmsUser.objects.exists():
            return
        for number in range(1, DEMO_CUSTOMERS + 1):
            userid = f"customer{number:03d}"
            emails = {"all": f"{userid}@example.com"}
            if number % 4 == 0:
                emails[channel.channel_key] = f"{userid}@shop.example.com"
            tags = [tag for index, tag in enumerate(DEMO_TAGS) if number % (index + 2) == 0]
            changes = UserChanges(emails=emails, tag_sets={"all": tags} if tags else {})
            user_changes_apply(userid=userid, changes=changes)

    def _first_messages(self, channel: Channel) -> None:
        """Two sent messages, so the history and the dashboard have something to show."""
        if Message.objects.exists():
            return
        message_create(
            channel=channel,
            audience=Audience(tags=["newsletter"]),
            content=Content(
                subject="Our autumn newsletter",
                html="<h1>Autumn at the Demo shop</h1><p>New arrivals every week.</p>",
            ),
            options=Options(owner="demo"),
            source=Message.Source.API,
        )
        message_create(
            channel=channel,
            audience=Audience(userids=["customer001", "customer004", "no-such-customer"]),
            content=Content(
                subject="Your order has shipped",
                html="<p>Your parcel is on its way.</p>",
            ),
            options=Options(owner="demo", priority=Message.Priority.HIGH),
            source=Message.Source.API,
        )

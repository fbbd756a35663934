import pytest

from channels_app import services as channel_services
from users_app.models import UmsUser, UserEmailBinding, UserTag


@pytest.fixture
def shop(db, plain_server, make_sender):
    """A channel whose default sender delivers to a plain aiosmtpd server without AUTH."""
    channel, _secret = channel_services.channel_create(name="Shop")
    sender = make_sender(plain_server, account="", password="", from_name="Shop")
    channel_services.channel_authorize_sender(channel=channel, sender=sender, is_default=True)
    return channel


@pytest.fixture
def bind(db):
    def make(
        userid: str, bind_id: str = "all", email: str | None = None, tags: tuple[str, ...] = ()
    ):
        user, _created = UmsUser.objects.get_or_create(userid=userid)
        if email:
            UserEmailBinding.objects.update_or_create(
                user=user, bind_id=bind_id, defaults={"email": email}
            )
        for tag in tags:
            UserTag.objects.get_or_create(user=user, bind_id=bind_id, tag=tag)
        return user

    return make

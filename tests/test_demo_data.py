"""`manage.py demo_data`: the demo a new user sees on `make run`, and safe to run again."""

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from messaging.audience import resolve_userids
from messaging.models import Message
from ums.management.commands import demo_data
from users_app.models import UmsUser


@pytest.fixture
def credentials(tmp_path, monkeypatch):
    path = tmp_path / "demo-credentials.json"
    monkeypatch.setattr(demo_data, "CREDENTIALS_FILE", path)
    return path


@pytest.mark.django_db
def test_demo_data_creates_staff_customers_and_a_history(credentials, capsys):
    call_command("demo_data")
    output = capsys.readouterr().out
    assert "Demo data ready." in output
    users = get_user_model().objects.filter(is_staff=True)
    assert set(users.values_list("username", flat=True)) >= set(demo_data.DEMO_USERS)
    assert UmsUser.objects.count() == demo_data.DEMO_CUSTOMERS
    subjects = set(Message.objects.values_list("subject", flat=True))
    assert subjects == {"Our autumn newsletter", "Your order has shipped"}
    assert credentials.exists()


@pytest.mark.django_db
def test_the_shop_binding_wins_for_demo_customers(credentials):
    call_command("demo_data")
    message = Message.objects.get(subject="Your order has shipped")
    recipients = resolve_userids(
        channel_key=message.channel.channel_key, userids=["customer001", "customer004"]
    )
    addresses = {r.userid: r.email for r in recipients}
    assert addresses == {
        "customer001": "customer001@example.com",
        "customer004": "customer004@shop.example.com",
    }


@pytest.mark.django_db
def test_running_demo_data_again_adds_nothing(credentials, capsys):
    call_command("demo_data")
    first_password = capsys.readouterr().out.split("admin / ")[1].split()[0]
    call_command("demo_data")
    second_password = capsys.readouterr().out.split("admin / ")[1].split()[0]
    assert first_password == second_password
    assert UmsUser.objects.count() == demo_data.DEMO_CUSTOMERS
    assert Message.objects.count() == 2

"""The staff roles created by the data migration hold exactly their listed permissions."""

import pytest
from django.contrib.auth.models import Group

from ums.roles import ROLES


@pytest.mark.django_db
@pytest.mark.parametrize("role", list(ROLES))
def test_role_has_exactly_its_permissions(role):
    group = Group.objects.get(name=role)
    granted = {
        f"{p.content_type.app_label}.{p.codename}"
        for p in group.permissions.select_related("content_type")
    }
    assert granted == set(ROLES[role])


@pytest.mark.django_db
def test_only_channel_admins_may_see_secrets_and_approve_ports():
    for role, permissions in ROLES.items():
        privileged = {
            "channels_app.view_master_secret",
            "channels_app.approve_port_exception",
        } & set(permissions)
        assert bool(privileged) == (role == "Channel admin")

"""The staff roles and their permissions, kept in sync by data migrations.

Each later migration that adds models extends ROLES and calls `sync_roles` again.
"""

from typing import Any

ROLES: dict[str, list[str]] = {
    "Channel admin": [
        "channels_app.add_channel",
        "channels_app.change_channel",
        "channels_app.delete_channel",
        "channels_app.view_channel",
        "channels_app.view_master_secret",
        "channels_app.add_channelsender",
        "channels_app.change_channelsender",
        "channels_app.delete_channelsender",
        "channels_app.view_channelsender",
        "channels_app.add_emailsender",
        "channels_app.change_emailsender",
        "channels_app.delete_emailsender",
        "channels_app.view_emailsender",
        "channels_app.test_emailsender",
        "channels_app.approve_port_exception",
        "channels_app.view_accesskey",
        "channels_app.change_accesskey",
        "messaging.view_capturedemail",
        "messaging.delete_capturedemail",
        "messaging.view_message",
        "messaging.view_delivery",
        *(
            f"channels_app.{action}_{model}"
            for model in ("callbackurl", "sendingrule", "sendingrulestep")
            for action in ("add", "change", "delete", "view")
        ),
        "messaging.view_callbackbatch",
        "messaging.change_callbackbatch",
    ],
    "Data admin": [
        "channels_app.view_channel",
        *(
            f"users_app.{action}_{model}"
            for model in ("umsuser", "useremailbinding", "usertag", "importjob")
            for action in ("add", "change", "delete", "view")
        ),
        "users_app.export_useremailbinding",
        *(
            f"messaging.{action}_{model}"
            for model in ("recipientlist", "recipientlistentry", "suppressedaddress")
            for action in ("add", "change", "delete", "view")
        ),
    ],
    "Marketing": [
        "channels_app.view_channel",
        "channels_app.view_emailsender",
        "users_app.view_umsuser",
        "users_app.view_useremailbinding",
        "users_app.view_usertag",
        "messaging.add_message",
        "messaging.view_message",
        "messaging.retract_message",
        "messaging.retry_message",
        "messaging.view_delivery",
        "messaging.add_draft",
        "messaging.change_draft",
        "messaging.delete_draft",
        "messaging.view_draft",
        *(f"messaging.{action}_messagetemplate" for action in ("add", "change", "delete", "view")),
        "channels_app.view_sendingrule",
        "messaging.view_recipientlist",
        "messaging.view_suppressedaddress",
    ],
    "Reviewer": [
        "channels_app.view_channel",
        "channels_app.view_emailsender",
        "users_app.view_umsuser",
        "users_app.view_useremailbinding",
        "users_app.view_usertag",
        "messaging.view_message",
        "messaging.view_delivery",
        "messaging.view_messagetemplate",
        "messaging.view_callbackbatch",
        "messaging.view_recipientlist",
        "messaging.view_suppressedaddress",
    ],
}


def sync_roles(apps: Any, schema_editor: Any) -> None:
    """Create the role groups and give each exactly the permissions listed above."""
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, codenames in ROLES.items():
        group, _created = Group.objects.get_or_create(name=role)
        # Permissions of models that a later migration creates are given by that migration's
        # own call; tests check that every role ends with exactly its list.
        permissions = [
            permission
            for dotted in codenames
            for permission in Permission.objects.filter(
                content_type__app_label=dotted.split(".")[0], codename=dotted.split(".")[1]
            )
        ]
        group.permissions.set(permissions)

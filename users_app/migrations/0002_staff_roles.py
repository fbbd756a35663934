from django.db import migrations

from ums.roles import sync_roles


class Migration(migrations.Migration):
    dependencies = [
        ("users_app", "0001_initial"),
        ("channels_app", "0003_sender_encryption_labels"),
    ]

    operations = [migrations.RunPython(sync_roles, migrations.RunPython.noop)]

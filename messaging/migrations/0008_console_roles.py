from django.db import migrations

from ums.roles import sync_roles


class Migration(migrations.Migration):
    dependencies = [
        ("messaging", "0007_console_drafts"),
    ]

    operations = [migrations.RunPython(sync_roles, migrations.RunPython.noop)]

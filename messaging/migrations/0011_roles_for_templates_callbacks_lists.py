from django.db import migrations

from ums.roles import sync_roles


class Migration(migrations.Migration):
    dependencies = [
        ("messaging", "0010_templates_callbacks_lists"),
        ("channels_app", "0005_callbacks_strategies_limits"),
    ]

    operations = [migrations.RunPython(sync_roles, migrations.RunPython.noop)]

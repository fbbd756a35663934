from django.db import migrations

from ums.roles import sync_roles


class Migration(migrations.Migration):
    dependencies = [
        ("messaging", "0003_retract_permission"),
        ("users_app", "0003_importjob_attempts"),
    ]

    operations = [migrations.RunPython(sync_roles, migrations.RunPython.noop)]

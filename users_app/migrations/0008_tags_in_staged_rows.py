from django.db import migrations, models


def fold_tags(apps, schema_editor):
    """Uploads checked but not yet confirmed keep their tags: each of their staged rows gets those
    staged for its (userid, bind_id), which the apply merges per user and scope anyway. Staging
    rows of other uploads are leftovers, dropped with the table."""
    if not apps.get_model("users_app", "ImportTag").objects.exists():
        return
    joined = (
        "string_agg(DISTINCT t.tag, ',')"
        if schema_editor.connection.vendor == "postgresql"
        else "group_concat(DISTINCT t.tag)"
    )
    schema_editor.execute(
        f"""UPDATE users_app_importrow SET tags = folded.tags
            FROM (
                SELECT t.job_id, t.userid, t.bind_id, {joined} AS tags
                FROM users_app_importtag t JOIN users_app_importjob j ON j.id = t.job_id
                WHERE j.status IN ('validated', 'applying')
                GROUP BY t.job_id, t.userid, t.bind_id
            ) folded
            WHERE users_app_importrow.job_id = folded.job_id
            AND users_app_importrow.userid = folded.userid
            AND users_app_importrow.bind_id = folded.bind_id"""
    )


class Migration(migrations.Migration):

    dependencies = [
        ("users_app", "0007_drop_redundant_user_indexes"),
    ]

    operations = [
        migrations.AddField(
            model_name="importrow",
            name="tags",
            field=models.TextField(blank=True, default=""),
        ),
        migrations.RunPython(fold_tags, migrations.RunPython.noop),
        migrations.DeleteModel(name="ImportTag"),
    ]

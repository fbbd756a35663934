"""The upload, preview and confirm pages, and the users' pages, through the admin test client."""

import io
import json

import openpyxl
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from channels_app import services as channel_services
from tests.users_app.files import csv_bytes, xlsx_bytes
from users_app.models import ImportJob, UmsUser, UserEmailBinding, UserTag

pytestmark = pytest.mark.django_db


def post_upload(client, name: str, content: bytes, bind_id: str = "all"):
    return client.post(
        reverse("admin:users_app_importjob_add"),
        {"file": SimpleUploadedFile(name, content), "default_bind_id": bind_id},
        follow=True,
    )


@pytest.fixture
def data_admin(client, role_user):
    client.force_login(role_user("Data admin"))
    return client


def test_data_admin_uploads_previews_and_confirms(data_admin):
    preview = post_upload(
        data_admin,
        "users.xlsx",
        xlsx_bytes([["u1", "a@example.com", "", "vip"], ["u2", "b@example.com", "", ""]]),
    )

    html = preview.content.decode()
    job = ImportJob.objects.get()
    assert "Ready to confirm" in html
    assert 'id="job-counts"' in html and "Confirm import" in html
    assert not UmsUser.objects.exists()

    done = data_admin.post(reverse("admin:users_app_importjob_confirm", args=[job.pk]), follow=True)

    assert "Imported: 2 rows, 2 new and 0 changed bindings." in done.content.decode()
    assert set(UserEmailBinding.objects.values_list("user__userid", "email")) == {
        ("u1", "a@example.com"),
        ("u2", "b@example.com"),
    }


def test_preview_lists_each_rejected_row_and_offers_no_confirm(data_admin):
    response = post_upload(
        data_admin,
        "bad.csv",
        csv_bytes([["u1", "a@example.com", "", ""], ["u2", "broken", "", ""]]),
    )

    html = response.content.decode()
    assert "Rejected rows" in html
    assert "<td>3</td><td>email</td><td>broken</td>" in html
    assert "Confirm import" not in html
    job = ImportJob.objects.get()
    report = data_admin.get(reverse("admin:users_app_importjob_report", args=[job.pk]))
    sheet = openpyxl.load_workbook(io.BytesIO(b"".join(report.streaming_content))).active
    assert [cell.value for cell in sheet[2]][:3] == [3, "email", "broken"]


def test_confirming_a_rejected_upload_is_refused(data_admin):
    post_upload(data_admin, "bad.csv", csv_bytes([["u2", "broken", "", ""]]))
    job = ImportJob.objects.get()

    response = data_admin.post(
        reverse("admin:users_app_importjob_confirm", args=[job.pk]), follow=True
    )

    assert "Only a validated upload" in response.content.decode()
    assert not UmsUser.objects.exists()


def test_upload_form_refuses_other_file_types(data_admin):
    response = post_upload(data_admin, "users.txt", b"userid,email\n")

    assert "Upload an .xlsx or .csv file" in response.content.decode()
    assert not ImportJob.objects.exists()


def test_upload_form_offers_channels_as_scopes(data_admin):
    channel, _secret = channel_services.channel_create(name="Shop")

    html = data_admin.get(reverse("admin:users_app_importjob_add")).content.decode()

    assert channel.channel_key in html
    assert "Download the template" in html


def test_status_endpoint_reports_progress(data_admin):
    post_upload(data_admin, "users.csv", csv_bytes([["u1", "a@example.com", "", ""]]))
    job = ImportJob.objects.get()

    status = json.loads(
        data_admin.get(reverse("admin:users_app_importjob_status", args=[job.pk])).content
    )

    assert status == {
        "status": "validated",
        "status_label": "Ready to confirm",
        "processed": 1,
        "total": 1,
        "errors": 0,
        "eta_seconds": None,
        "in_progress": False,
    }


def test_job_page_shows_a_progress_bar_while_validating(data_admin, settings):
    settings.UMS_IMPORT_SYNC_ROWS = 0  # everything goes to the background
    post_upload(data_admin, "users.csv", csv_bytes([["u1", "a@example.com", "", ""]]))
    job = ImportJob.objects.get()

    html = data_admin.get(
        reverse("admin:users_app_importjob_change", args=[job.pk])
    ).content.decode()

    assert job.status == ImportJob.Status.QUEUED
    assert '<progress id="job-progress"' in html
    assert "import_progress.js" in html


def test_template_download_has_the_upload_columns(data_admin):
    response = data_admin.get(reverse("admin:users_app_importjob_template"))

    sheet = openpyxl.load_workbook(io.BytesIO(b"".join(response.streaming_content))).worksheets[0]
    assert [cell.value for cell in sheet[1]] == ["userid", "email", "bind_id", "tag"]


def test_export_escapes_formula_cells(data_admin):
    user = UmsUser.objects.create(userid="u1")
    UserEmailBinding.objects.create(user=user, bind_id="all", email="=cmd|'/c calc'!A1@example.com")
    UserEmailBinding.objects.create(
        user=UmsUser.objects.create(userid="@u2"), bind_id="all", email="b@example.com"
    )

    response = data_admin.post(
        reverse("admin:users_app_useremailbinding_export"),
        {
            "format": "1",
            "resource": "0",
            "bindingresource_userid": "on",
            "bindingresource_email": "on",
            "bindingresource_bind_id": "on",
        },
    )

    text = response.content.decode()
    assert response.status_code == 200, text[:500]
    assert "'=cmd" in text
    assert "'@u2" in text


def test_reviewers_cannot_upload_or_export(client, role_user):
    client.force_login(role_user("Reviewer"))

    assert client.get(reverse("admin:users_app_importjob_add")).status_code == 403
    assert client.get(reverse("admin:users_app_importjob_template")).status_code == 403
    assert client.get(reverse("admin:users_app_umsuser_changelist")).status_code == 200
    assert (
        client.post(reverse("admin:users_app_useremailbinding_export"), {"format": "1"}).status_code
        == 403
    )


def test_marketing_cannot_edit_users(client, role_user):
    user = UmsUser.objects.create(userid="u1")
    client.force_login(role_user("Marketing"))

    response = client.post(
        reverse("admin:users_app_umsuser_change", args=[user.pk]), {"userid": "hacked"}
    )

    assert response.status_code == 403
    user.refresh_from_db()
    assert user.userid == "u1"


def test_users_are_found_by_userid_or_exact_email_and_filtered_by_scope_and_tag(data_admin):
    channel, _secret = channel_services.channel_create(name="Shop")
    zhang = UmsUser.objects.create(userid="zhangsan")
    li = UmsUser.objects.create(userid="lisi")
    UserEmailBinding.objects.create(user=zhang, bind_id="all", email="zs@example.com")
    UserEmailBinding.objects.create(user=li, bind_id=channel.channel_key, email="ls@example.com")
    UserTag.objects.create(user=li, bind_id="all", tag="vip")
    url = reverse("admin:users_app_umsuser_changelist")

    def listed(**params) -> set[str]:
        html = data_admin.get(url, params).content.decode()
        return {name for name in ("zhangsan", "lisi") if f">{name}</a>" in html}

    assert listed(q="zhang") == {"zhangsan"}
    assert listed(q="ls@example.com") == {"lisi"}
    assert listed(bind_id=channel.channel_key) == {"lisi"}
    assert listed(tag="vip") == {"lisi"}


def test_user_page_groups_bindings_and_tags_by_scope(data_admin):
    channel, _secret = channel_services.channel_create(name="Shop")
    user = UmsUser.objects.create(userid="zhangsan")
    UserEmailBinding.objects.create(user=user, bind_id="all", email="zs@example.com")
    UserEmailBinding.objects.create(
        user=user, bind_id=channel.channel_key, email="zs-shop@example.com"
    )
    UserTag.objects.create(user=user, bind_id=channel.channel_key, tag="vip")

    html = data_admin.get(
        reverse("admin:users_app_umsuser_change", args=[user.pk])
    ).content.decode()

    assert "<tr><th>all</th><td>zs@example.com</td><td>—</td></tr>" in html
    assert (
        f"<tr><th>Shop ({channel.channel_key})</th><td>zs-shop@example.com</td><td>vip</td></tr>"
        in html
    )


def test_data_admin_edits_a_binding_with_validation(data_admin):
    user = UmsUser.objects.create(userid="u1")
    binding = UserEmailBinding.objects.create(user=user, bind_id="all", email="a@example.com")
    url = reverse("admin:users_app_useremailbinding_change", args=[binding.pk])

    refused = data_admin.post(url, {"user": user.pk, "bind_id": "all", "email": "no good"})
    accepted = data_admin.post(url, {"user": user.pk, "bind_id": "all", "email": "New@Example.COM"})

    assert "not a valid address" in refused.content.decode()
    assert accepted.status_code == 302
    binding.refresh_from_db()
    assert binding.email == "New@example.com"


def test_bindings_list_offers_upload_template_and_export(data_admin):
    user = UmsUser.objects.create(userid="u1")
    UserEmailBinding.objects.create(user=user, bind_id="all", email="a@example.com")

    response = data_admin.get(reverse("admin:users_app_useremailbinding_changelist"))

    html = response.content.decode()
    assert response.status_code == 200
    assert "a@example.com" in html
    assert reverse("admin:users_app_useremailbinding_export") in html
    assert reverse("admin:users_app_importjob_add") in html
    assert reverse("admin:users_app_importjob_template") in html


def test_deleting_a_channel_shows_and_removes_its_bindings(admin_client):
    channel, _secret = channel_services.channel_create(name="Shop")
    user = UmsUser.objects.create(userid="u1")
    UserEmailBinding.objects.create(user=user, bind_id=channel.channel_key, email="a@example.com")
    UserEmailBinding.objects.create(user=user, bind_id="all", email="b@example.com")
    url = reverse("admin:channels_app_channel_delete", args=[channel.pk])

    confirm = admin_client.get(url).content.decode()
    admin_client.post(url, {"post": "yes"})

    assert "Email bindings of the channel: 1" in confirm
    assert list(UserEmailBinding.objects.values_list("email", flat=True)) == ["b@example.com"]


def test_the_console_refuses_a_userid_the_upload_would_refuse(data_admin):
    response = data_admin.post(
        reverse("admin:users_app_umsuser_add"),
        {
            "userid": "bad id",
            "bindings-TOTAL_FORMS": "0",
            "bindings-INITIAL_FORMS": "0",
            "tags-TOTAL_FORMS": "0",
            "tags-INITIAL_FORMS": "0",
        },
    )

    assert "only letters" in response.content.decode()
    assert not UmsUser.objects.exists()


def test_a_userid_with_an_at_sign_is_found(data_admin):
    UmsUser.objects.create(userid="zhang@shop")

    html = data_admin.get(
        reverse("admin:users_app_umsuser_changelist"), {"q": "zhang@shop"}
    ).content.decode()

    assert ">zhang@shop</a>" in html


def test_deleting_an_unchecked_upload_deletes_its_file(data_admin, settings):
    settings.UMS_IMPORT_SYNC_ROWS = 0  # left queued, with its file
    post_upload(data_admin, "users.csv", csv_bytes([["u1", "a@example.com", "", ""]]))
    job = ImportJob.objects.get()
    path = job.file.path

    data_admin.post(reverse("admin:users_app_importjob_delete", args=[job.pk]), {"post": "yes"})

    import os

    assert not ImportJob.objects.exists()
    assert not os.path.exists(path)

"""Black and white lists and the suppression list: the services, the pipeline's checks, and the
console pages per role, uploads included."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.urls import reverse

from channels_app import services as channel_services
from messaging import lists
from messaging.models import Message, RecipientList, RecipientListEntry, SuppressedAddress
from tests.users_app.files import csv_bytes, xlsx_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def channel(db):
    return channel_services.channel_create(name="Shop")[0]


@pytest.fixture
def other_channel(db):
    return channel_services.channel_create(name="Games")[0]


def make_list(kind="black", number=1, channel=None, userids=()):
    recipient_list = RecipientList.objects.create(
        kind=kind, number=number, name=f"{kind} {number}", channel=channel
    )
    if userids:
        lists.recipient_list_add(recipient_list=recipient_list, userids=userids)
    return recipient_list


@pytest.fixture
def make_message(channel, make_sender):
    sender = make_sender()

    def make(**fields):
        return Message.objects.create(
            channel=channel, sender=sender, source=Message.Source.API, subject="Hi", **fields
        )

    return make


def entries(recipient_list):
    return set(recipient_list.entries.values_list("userid", flat=True))


# --- recipient_list_for_message: what the API maps to its codes ---------------------------------


def test_a_black_id_gives_the_blacklist_and_a_white_id_the_whitelist(channel):
    black = make_list("black", 7, channel)
    white = make_list("white", 7, channel)

    assert lists.recipient_list_for_message(channel=channel, black_id=7, white_id=None) == (
        black,
        None,
    )
    assert lists.recipient_list_for_message(channel=channel, black_id=None, white_id=7) == (
        None,
        white,
    )
    assert lists.recipient_list_for_message(channel=channel, black_id=None, white_id=None) == (
        None,
        None,
    )


def test_black_id_and_white_id_together_are_1015097(channel):
    make_list("black", 1, channel)
    make_list("white", 2, channel)

    with pytest.raises(lists.ListRefused) as refused:
        lists.recipient_list_for_message(channel=channel, black_id=1, white_id=2)

    assert refused.value.code == 1015097
    assert refused.value.status == 400


@pytest.mark.parametrize("black_id", [99, 5])
def test_an_unknown_black_id_or_a_whitelist_number_is_1015046(channel, black_id):
    make_list("white", 5, channel)

    with pytest.raises(lists.ListRefused) as refused:
        lists.recipient_list_for_message(channel=channel, black_id=black_id, white_id=None)

    assert refused.value.code == 1015046
    assert refused.value.message.startswith("option.black_id: ")


def test_another_channels_blacklist_is_1015046(channel, other_channel):
    make_list("black", 3, other_channel)

    with pytest.raises(lists.ListRefused) as refused:
        lists.recipient_list_for_message(channel=channel, black_id=3, white_id=None)

    assert refused.value.code == 1015046


def test_an_unknown_white_id_is_4004_naming_the_field(channel, other_channel):
    make_list("white", 4, other_channel)

    with pytest.raises(lists.ListRefused) as refused:
        lists.recipient_list_for_message(channel=channel, black_id=None, white_id=4)

    assert refused.value.code == 4004
    assert refused.value.field == "option.white_id"
    assert refused.value.message.startswith("option.white_id: ")


def test_a_list_without_a_channel_serves_every_channel(channel, other_channel):
    shared = make_list("black", 8, channel=None)

    for each in (channel, other_channel):
        found = lists.recipient_list_for_message(channel=each, black_id=8, white_id=None)
        assert found == (shared, None)


# --- userids_blocked and emails_suppressed: the pipeline's checks -------------------------------


def test_a_blacklist_blocks_its_userids_only(make_message):
    black = make_list("black", 1, userids=["u1", "u2"])
    message = make_message(black_list=black)

    blocked = lists.userids_blocked(message=message, userids=["u1", "u3", "", "u2", "u1"])

    assert blocked == {"u1", "u2"}


def test_a_whitelist_blocks_everyone_not_on_it_but_not_raw_addresses(make_message):
    white = make_list("white", 1, userids=["u1"])
    message = make_message(white_list=white)

    assert lists.userids_blocked(message=message, userids=["u1", "u2", "u3", ""]) == {"u2", "u3"}


def test_a_message_without_a_list_blocks_nobody(make_message, django_assert_num_queries):
    make_list("black", 1, userids=["u1"])
    message = make_message()

    with django_assert_num_queries(0):
        assert lists.userids_blocked(message=message, userids=["u1"]) == set()


def test_a_deleted_list_no_longer_filters_its_messages(make_message):
    black = make_list("black", 1, userids=["u1"])
    message = make_message(black_list=black)
    black.delete()
    message.refresh_from_db()

    assert lists.userids_blocked(message=message, userids=["u1"]) == set()


def test_userids_are_checked_one_query_per_chunk(make_message, django_assert_num_queries):
    userids = [f"user{n}" for n in range(2 * lists.CHUNK + 10)]
    black = make_list("black", 1, userids=userids[::2])
    message = make_message(black_list=black)

    with django_assert_num_queries(3):
        blocked = lists.userids_blocked(message=message, userids=userids)

    assert blocked == set(userids[::2])


def test_an_address_suppressed_everywhere_is_suppressed_for_every_channel(channel, other_channel):
    lists.address_suppress(email="ann@example.com", reason="manual")

    for each in (channel, other_channel):
        assert lists.emails_suppressed(channel=each, emails=["ann@example.com"]) == {
            "ann@example.com"
        }


def test_an_address_suppressed_for_one_channel_still_gets_the_others_mail(channel, other_channel):
    lists.address_suppress(email="bob@example.com", channel=channel, reason="unsubscribe")

    assert lists.emails_suppressed(channel=channel, emails=["bob@example.com"]) == {
        "bob@example.com"
    }
    assert lists.emails_suppressed(channel=other_channel.pk, emails=["bob@example.com"]) == set()


def test_addresses_are_compared_without_regard_to_case_and_returned_as_given(channel):
    row, created = lists.address_suppress(email="  Ann.Lee@Example.COM ", reason="manual")

    assert created and row.email == "ann.lee@example.com"
    found = lists.emails_suppressed(
        channel=channel, emails=["ANN.LEE@example.com", "ann.lee@example.com", "other@example.com"]
    )
    assert found == {"ANN.LEE@example.com", "ann.lee@example.com"}


def test_addresses_are_checked_one_query_per_chunk(channel, django_assert_num_queries):
    emails = [f"user{n}@example.com" for n in range(lists.CHUNK + 1)]
    lists.addresses_suppress(emails=emails[:3], channel=None, reason="manual")

    with django_assert_num_queries(2):
        found = lists.emails_suppressed(channel=channel, emails=emails)

    assert found == set(emails[:3])


def test_suppressing_twice_keeps_one_row_per_scope(channel):
    first, created = lists.address_suppress(
        email="ann@example.com", channel=channel, reason="manual"
    )
    again, created_again = lists.address_suppress(
        email="ANN@example.com", channel=channel, reason="unsubscribe"
    )
    _everywhere, created_everywhere = lists.address_suppress(
        email="ann@example.com", reason="manual"
    )

    assert created and not created_again and created_everywhere
    assert again.pk == first.pk and again.reason == "manual"
    assert SuppressedAddress.objects.count() == 2


def test_permanent_failures_are_suppressed_only_when_the_channel_says_so(channel):
    emails = ["a@example.com", "B@example.com", "a@example.com"]

    assert lists.addresses_suppress_failed(channel=channel, emails=emails) == 0
    assert not SuppressedAddress.objects.exists()

    channel.suppress_on_permanent_failure = True
    assert lists.addresses_suppress_failed(channel=channel, emails=emails) == 2
    assert lists.addresses_suppress_failed(channel=channel, emails=emails) == 0

    rows = SuppressedAddress.objects.values_list("email", "channel", "reason")
    assert set(rows) == {
        ("a@example.com", channel.pk, "failure"),
        ("b@example.com", channel.pk, "failure"),
    }


def test_the_sql_condition_blocks_the_same_recipients(make_message, channel):
    black = make_list("black", 1, userids=["u1"])
    white = make_list("white", 2, userids=["u1", "u2"])
    lists.address_suppress(email="two@example.com", reason="manual")
    recipients = [("u1", "one@example.com"), ("u2", "Two@Example.com"), ("u3", "x@example.com")]
    recipients.append(("", "four@example.com"))
    values = {}
    selects = []
    for n, (userid, email) in enumerate(recipients):
        values.update({f"u{n}": userid, f"e{n}": email})
        selects.append(f"SELECT %(u{n})s AS userid, %(e{n})s AS email")

    def blocked(message):
        reason, params = lists.recipients_block_reason_sql(
            message=message, userid="r.userid", email="r.email"
        )
        sql = f"SELECT r.userid FROM ({' UNION ALL '.join(selects)}) r WHERE {reason} <> ''"
        with connection.cursor() as cursor:
            cursor.execute(sql, {**values, **params})
            return {row[0] for row in cursor.fetchall()}

    assert blocked(make_message(black_list=black)) == {"u1", "u2"}
    assert blocked(make_message(white_list=white)) == {"u2", "u3"}
    assert blocked(make_message()) == {"u2"}


# --- list changes -------------------------------------------------------------------------------


def test_adding_counts_new_and_present_userids_and_keeps_the_size():
    black = make_list("black", 1, userids=["u1", "u2"])

    change = lists.recipient_list_add(recipient_list=black, userids=["u2", "u3", "u3"])

    assert change == lists.ListChange(added=1, already=1)
    black.refresh_from_db()
    assert black.size == 3 and entries(black) == {"u1", "u2", "u3"}


def test_replacing_keeps_common_userids_adds_new_and_removes_the_rest():
    black = make_list("black", 1, userids=["u1", "u2", "u3"])

    change = lists.recipient_list_replace(recipient_list=black, userids=["u3", "u4"])

    assert change == lists.ListChange(added=1, already=1, removed=2)
    black.refresh_from_db()
    assert black.size == 2 and entries(black) == {"u3", "u4"}


def test_removing_ignores_userids_not_on_the_list():
    black = make_list("black", 1, userids=["u1", "u2"])

    change = lists.recipient_list_remove(recipient_list=black, userids=["u1", "nobody"])

    assert change.removed == 1
    black.refresh_from_db()
    assert black.size == 1 and entries(black) == {"u2"}


# --- console: lists -----------------------------------------------------------------------------


@pytest.fixture
def data_admin(client, role_user):
    client.force_login(role_user("Data admin"))
    return client


def upload(client, recipient_list, name, content, mode="add"):
    return client.post(
        reverse("admin:messaging_recipientlist_upload", args=[recipient_list.pk]),
        {"file": SimpleUploadedFile(name, content), "mode": mode},
        follow=True,
    )


def test_data_admin_creates_a_list_and_adds_userids_by_hand(data_admin, channel):
    response = data_admin.post(
        reverse("admin:messaging_recipientlist_add"),
        {"kind": "white", "number": "12", "name": "VIP", "channel": channel.pk},
        follow=True,
    )
    assert response.status_code == 200
    white = RecipientList.objects.get(kind="white", number=12)
    url = reverse("admin:messaging_recipientlist_entries", args=[white.pk])

    added = data_admin.post(url, {"action": "add", "userids": "u1, u2\nu3 u1"}, follow=True)
    again = data_admin.post(url, {"action": "add", "userids": "u3\nu4"}, follow=True)

    assert "3 added, 0 already there." in added.content.decode()
    assert "1 added, 1 already there." in again.content.decode()
    white.refresh_from_db()
    assert white.size == 4 and entries(white) == {"u1", "u2", "u3", "u4"}


def test_a_typed_bad_userid_is_named_and_nothing_is_added(data_admin):
    black = make_list("black", 1)
    url = reverse("admin:messaging_recipientlist_entries", args=[black.pk])

    response = data_admin.post(url, {"action": "add", "userids": "u1\nbad id!%"})

    html = response.content.decode()
    assert "%: only letters, digits" in html
    assert not black.entries.exists()


def test_the_entries_page_searches_pages_and_removes_selected_userids(data_admin):
    black = make_list("black", 1, userids=[f"user{n:03}" for n in range(150)] + ["vip"])
    url = reverse("admin:messaging_recipientlist_entries", args=[black.pk])

    first = data_admin.get(url).content.decode()
    found = data_admin.get(url, {"q": "VI"}).content.decode()
    removed = data_admin.post(
        url, {"action": "remove_selected", "selected": ["user000", "vip"]}, follow=True
    )

    assert "151 userids" in first and "Page 1 of 2" in first and "user099" in first
    assert "user100" not in first
    assert "vip" in found and "user001" not in found
    assert "2 removed." in removed.content.decode()
    black.refresh_from_db()
    assert black.size == 149 and "vip" not in entries(black)


def test_typed_userids_are_removed_by_hand(data_admin):
    black = make_list("black", 1, userids=["u1", "u2"])
    url = reverse("admin:messaging_recipientlist_entries", args=[black.pk])

    response = data_admin.post(url, {"action": "remove", "userids": "u2 u9"}, follow=True)

    assert "1 removed." in response.content.decode()
    assert entries(black) == {"u1"}


def test_an_upload_adds_to_the_list(data_admin):
    black = make_list("black", 1, userids=["u1"])

    response = upload(
        data_admin, black, "ids.csv", csv_bytes([["u1"], ["u2"], [""], ["u3"], ["u2"]], ["userid"])
    )

    assert "2 added, 1 already there." in response.content.decode()
    black.refresh_from_db()
    assert black.size == 3 and entries(black) == {"u1", "u2", "u3"}


def test_an_upload_without_a_header_and_numeric_cells_replaces_the_list(data_admin):
    black = make_list("black", 1, userids=["u1", "10001"])

    response = upload(
        data_admin, black, "ids.xlsx", xlsx_bytes([[10002]], header=[10001]), mode="replace"
    )

    assert "1 added, 1 already there, 1 removed." in response.content.decode()
    black.refresh_from_db()
    assert black.size == 2 and entries(black) == {"10001", "10002"}


def test_an_upload_with_a_bad_row_changes_nothing_and_names_the_row(data_admin):
    black = make_list("black", 1, userids=["u1"])

    response = upload(
        data_admin,
        black,
        "ids.xlsx",
        xlsx_bytes([["u2"], ["bad id"], ["u3", "extra"]], header=["userid"]),
        mode="replace",
    )

    html = response.content.decode()
    assert "nothing was changed" in html
    assert "Row 3, column userid: only letters" in html
    assert "Row 4, column B: the file must have one column only (userid)" in html
    black.refresh_from_db()
    assert black.size == 1 and entries(black) == {"u1"}


def test_an_upload_of_a_refused_file_says_why(data_admin):
    black = make_list("black", 1)

    refused = upload(data_admin, black, "ids.xlsx", b"PK\x03\x04 not really a workbook")
    wrong_type = upload(data_admin, black, "ids.txt", b"u1\n")

    assert "The file is not a valid .xlsx workbook." in refused.content.decode()
    assert "Upload an .xlsx or .csv file." in wrong_type.content.decode()
    assert not black.entries.exists()


def test_reading_a_file_takes_each_userid_once_and_refuses_an_oversized_one(tmp_path, monkeypatch):
    path = tmp_path / "ids.csv"
    path.write_bytes(csv_bytes([["u1"], ["u2"], ["u1"], ["u3"]], ["userid"]))

    assert lists.userids_read(path=path) == ["u1", "u2", "u3"]

    monkeypatch.setattr(lists, "UPLOAD_MAX_ROWS", 3)
    with pytest.raises(lists.UploadRejected) as rejected:
        lists.userids_read(path=path)
    assert rejected.value.errors == ["The file has more than 3 rows: split it into smaller files."]


def test_a_file_with_only_a_header_is_refused(tmp_path):
    path = tmp_path / "emails.csv"
    path.write_bytes(csv_bytes([], ["email"]))

    with pytest.raises(lists.UploadRejected) as rejected:
        lists.addresses_read(path=path)

    assert rejected.value.errors == ["The file holds no email."]


def test_deleting_a_list_confirms_with_a_count_not_every_userid(data_admin, make_message):
    black = make_list("black", 1, userids=[f"user{n}" for n in range(500)])
    message = make_message(black_list=black)
    url = reverse("admin:messaging_recipientlist_delete", args=[black.pk])

    page = data_admin.get(url).content.decode()
    data_admin.post(url, {"post": "yes"})

    assert "with its 500 userids" in page and "user499" not in page
    assert not RecipientList.objects.exists() and not RecipientListEntry.objects.exists()
    message.refresh_from_db()
    assert message.black_list is None


@pytest.mark.parametrize("role", ["Marketing", "Reviewer"])
def test_marketing_and_reviewers_see_lists_but_cannot_change_them(client, role_user, role):
    client.force_login(role_user(role))
    black = make_list("black", 1, userids=["u1"])
    entries_url = reverse("admin:messaging_recipientlist_entries", args=[black.pk])

    listing = client.get(reverse("admin:messaging_recipientlist_changelist"))
    page = client.get(entries_url)
    added = client.post(entries_url, {"action": "add", "userids": "u2"})
    uploaded = upload(client, black, "ids.csv", csv_bytes([["u3"]], ["userid"]))

    assert listing.status_code == 200 and "black 1" in listing.content.decode()
    assert page.status_code == 200 and "u1" in page.content.decode()
    assert "Upload userids" not in page.content.decode()
    assert 'name="action" value="add"' not in page.content.decode()
    assert added.status_code == 403 and uploaded.status_code == 403
    assert entries(black) == {"u1"}


def test_channel_admins_do_not_see_lists(client, role_user):
    client.force_login(role_user("Channel admin"))

    response = client.get(reverse("admin:messaging_recipientlist_changelist"))

    assert response.status_code == 403


def test_lists_are_filtered_by_kind_and_channel_and_found_by_number(data_admin, channel):
    make_list("black", 1, channel)
    make_list("white", 2, None)
    url = reverse("admin:messaging_recipientlist_changelist")

    by_kind = data_admin.get(url, {"kind__exact": "white"}).content.decode()
    everywhere = data_admin.get(url, {"scope": "all"}).content.decode()
    by_channel = data_admin.get(url, {"scope": str(channel.pk)}).content.decode()
    by_number = data_admin.get(url, {"q": "2"}).content.decode()

    assert "white 2" in by_kind and "black 1" not in by_kind
    assert "white 2" in everywhere and "black 1" not in everywhere
    assert "black 1" in by_channel and "white 2" not in by_channel
    assert "white 2" in by_number and "black 1" not in by_number


# --- console: the suppression list --------------------------------------------------------------


def upload_addresses(client, name, content, channel=None, note=""):
    return client.post(
        reverse("admin:messaging_suppressedaddress_upload"),
        {"file": SimpleUploadedFile(name, content), "channel": channel or "", "note": note},
        follow=True,
    )


def test_data_admin_suppresses_an_address_by_hand(data_admin, channel):
    url = reverse("admin:messaging_suppressedaddress_add")

    data_admin.post(url, {"email": "Ann@Example.com", "channel": channel.pk, "note": "asked"})
    again = data_admin.post(url, {"email": "ann@example.com", "channel": channel.pk})
    invalid = data_admin.post(url, {"email": "not an address", "channel": ""})

    row = SuppressedAddress.objects.get()
    assert (row.email, row.channel, row.reason, row.note) == (
        "ann@example.com",
        channel,
        "manual",
        "asked",
    )
    assert row.created_by.username == "dataadmin"
    assert "ann@example.com is already suppressed for Shop." in again.content.decode()
    assert "not a valid address" in invalid.content.decode()


def test_an_address_upload_suppresses_each_address_once(data_admin, channel):
    lists.address_suppress(email="a@example.com", channel=channel, reason="unsubscribe")

    response = upload_addresses(
        data_admin,
        "emails.csv",
        csv_bytes([["a@example.com"], ["B@Example.com"], ["b@example.com"]], ["email"]),
        channel=channel.pk,
        note="old list",
    )

    assert "1 added, 1 already there." in response.content.decode()
    assert set(SuppressedAddress.objects.values_list("email", "reason", "note")) == {
        ("a@example.com", "unsubscribe", ""),
        ("b@example.com", "manual", "old list"),
    }


def test_an_address_upload_with_a_bad_row_changes_nothing(data_admin):
    response = upload_addresses(
        data_admin, "emails.xlsx", xlsx_bytes([["a@example.com"], ["broken"]], ["email"])
    )

    assert "Row 3, column email: not a valid address" in response.content.decode()
    assert not SuppressedAddress.objects.exists()


def test_the_suppression_list_is_searched_and_filtered(data_admin, channel):
    lists.address_suppress(email="ann@example.com", reason="manual")
    lists.address_suppress(email="bob@example.com", channel=channel, reason="unsubscribe")
    url = reverse("admin:messaging_suppressedaddress_changelist")

    found = data_admin.get(url, {"q": "ANN"}).content.decode()
    unsubscribed = data_admin.get(url, {"reason__exact": "unsubscribe"}).content.decode()
    everywhere = data_admin.get(url, {"scope": "all"}).content.decode()

    assert "ann@example.com" in found and "bob@example.com" not in found
    assert "bob@example.com" in unsubscribed and "ann@example.com" not in unsubscribed
    assert "ann@example.com" in everywhere and "bob@example.com" not in everywhere


def test_data_admin_edits_only_the_note_of_a_suppressed_address(data_admin, channel):
    row, _created = lists.address_suppress(email="ann@example.com", reason="unsubscribe")
    url = reverse("admin:messaging_suppressedaddress_change", args=[row.pk])

    page = data_admin.get(url).content.decode()
    response = data_admin.post(
        url, {"note": "asked by phone", "email": "x@example.com", "channel": channel.pk}
    )

    assert 'name="email"' not in page and 'name="note"' in page
    assert response.status_code == 302
    row.refresh_from_db()
    assert (row.email, row.channel, row.reason, row.note) == (
        "ann@example.com",
        None,
        "unsubscribe",
        "asked by phone",
    )


def test_data_admin_removes_a_suppressed_address(data_admin):
    row, _created = lists.address_suppress(email="ann@example.com", reason="manual")

    data_admin.post(
        reverse("admin:messaging_suppressedaddress_delete", args=[row.pk]), {"post": "yes"}
    )

    assert not SuppressedAddress.objects.exists()


@pytest.mark.parametrize("role", ["Marketing", "Reviewer"])
def test_marketing_and_reviewers_see_the_suppression_list_but_cannot_change_it(
    client, role_user, role
):
    client.force_login(role_user(role))
    lists.address_suppress(email="ann@example.com", reason="manual")

    listing = client.get(reverse("admin:messaging_suppressedaddress_changelist"))
    added = client.post(
        reverse("admin:messaging_suppressedaddress_add"), {"email": "x@example.com"}
    )
    uploaded = upload_addresses(client, "emails.csv", csv_bytes([["y@example.com"]], ["email"]))

    assert listing.status_code == 200 and "ann@example.com" in listing.content.decode()
    assert "Upload addresses" not in listing.content.decode()
    assert added.status_code == 403 and uploaded.status_code == 403
    assert SuppressedAddress.objects.count() == 1

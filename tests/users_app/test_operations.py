"""The user API's operations, called directly: set/add/del of emails and tags, upsert, deletes."""

import pytest
from django.db import DatabaseError

from channels_app import services
from channels_app.api_auth import ApiPrincipal
from ums.api import ApiError
from users_app import operations
from users_app.models import UmsUser, UserEmailBinding, UserTag
from users_app.operations import user_opt_apply, users_delete
from users_app.validation import FieldError

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop():
    return services.channel_create(name="Shop")[0]


@pytest.fixture
def games():
    return services.channel_create(name="Games")[0]


@pytest.fixture
def admin_key():
    return ApiPrincipal(access_key=services.access_key_create()[0])


def emails(userid: str) -> dict[str, str]:
    return dict(
        UserEmailBinding.objects.filter(user__userid=userid).values_list("bind_id", "email")
    )


def tags(userid: str, bind_id: str = "all") -> set[str]:
    return set(
        UserTag.objects.filter(user__userid=userid, bind_id=bind_id).values_list("tag", flat=True)
    )


def apply(principal, *items):
    return user_opt_apply(principal=principal, items=list(items))


# --- emails ---------------------------------------------------------------------------------


def test_set_email_creates_the_user_and_binds_the_address(admin_key):
    result = apply(admin_key, {"userid": "u1", "set": {"email": {"all": "a@example.com"}}})

    assert result == {"success": ["u1"], "fail": []}
    assert emails("u1") == {"all": "a@example.com"}


def test_set_email_replaces_the_address_of_that_scope_only(admin_key, shop):
    apply(
        admin_key,
        {"userid": "u1", "set": {"email": {"all": "a@example.com", shop.channel_key: "s@x.cn"}}},
    )

    apply(admin_key, {"userid": "u1", "set": {"email": {"all": "new@example.com"}}})

    assert emails("u1") == {"all": "new@example.com", shop.channel_key: "s@x.cn"}


def test_add_email_keeps_one_address_per_scope(admin_key):
    apply(admin_key, {"userid": "u1", "set": {"email": {"all": "a@example.com"}}})

    apply(admin_key, {"userid": "u1", "add": {"email": {"all": "b@example.com"}}})

    assert emails("u1") == {"all": "b@example.com"}


def test_email_domain_is_normalized(admin_key):
    apply(admin_key, {"userid": "u1", "set": {"email": {"all": "Ann@Example.COM"}}})

    assert emails("u1") == {"all": "Ann@example.com"}


@pytest.mark.parametrize("value", [None, ""])
def test_del_email_without_an_address_removes_whatever_is_bound(admin_key, value):
    apply(admin_key, {"userid": "u1", "set": {"email": {"all": "a@example.com"}}})

    result = apply(admin_key, {"userid": "u1", "del": {"email": {"all": value}}})

    assert result["success"] == ["u1"]
    assert emails("u1") == {}


def test_del_email_with_the_bound_address_removes_it_ignoring_case(admin_key):
    apply(admin_key, {"userid": "u1", "set": {"email": {"all": "a@example.com"}}})

    apply(admin_key, {"userid": "u1", "del": {"email": {"all": "A@example.com"}}})

    assert emails("u1") == {}


def test_del_email_with_another_address_keeps_the_binding_and_succeeds(admin_key):
    apply(admin_key, {"userid": "u1", "set": {"email": {"all": "a@example.com"}}})

    result = apply(admin_key, {"userid": "u1", "del": {"email": {"all": "old@example.com"}}})

    assert result == {"success": ["u1"], "fail": []}
    assert emails("u1") == {"all": "a@example.com"}


def test_bad_email_fails_the_item_with_4004_naming_email(admin_key):
    result = apply(
        admin_key,
        {"userid": "bad", "set": {"email": {"all": "not-an-address"}}},
        {"userid": "good", "set": {"email": {"all": "g@example.com"}}},
    )

    assert result["success"] == ["good"]
    assert result["fail"] == [
        {"userid": "bad", "errcode": 4004, "errmsg": "email: not a valid address"}
    ]
    assert not UmsUser.objects.filter(userid="bad").exists()


# --- tags -----------------------------------------------------------------------------------


def test_set_tag_replaces_the_tags_of_that_scope_only(admin_key, shop):
    apply(
        admin_key,
        {"userid": "u1", "set": {"tag": {"all": ["a", "b"], shop.channel_key: ["s"]}}},
    )

    apply(admin_key, {"userid": "u1", "set": {"tag": {"all": ["b", "c"]}}})

    assert tags("u1") == {"b", "c"}
    assert tags("u1", shop.channel_key) == {"s"}


def test_set_tag_with_an_empty_list_clears_the_scope(admin_key):
    apply(admin_key, {"userid": "u1", "set": {"tag": {"all": ["a", "b"]}}})

    apply(admin_key, {"userid": "u1", "set": {"tag": {"all": []}}})

    assert tags("u1") == set()


def test_add_tag_appends_without_duplicates(admin_key):
    apply(admin_key, {"userid": "u1", "set": {"tag": {"all": ["a"]}}})

    apply(admin_key, {"userid": "u1", "add": {"tag": {"all": ["a", "b", "b"]}}})

    assert tags("u1") == {"a", "b"}


def test_del_tag_removes_the_listed_tags(admin_key):
    apply(admin_key, {"userid": "u1", "set": {"tag": {"all": ["a", "b", "c"]}}})

    apply(admin_key, {"userid": "u1", "del": {"tag": {"all": ["a", "c", "never-there"]}}})

    assert tags("u1") == {"b"}


def test_too_long_tag_fails_the_item_with_4004(admin_key):
    result = apply(admin_key, {"userid": "u1", "add": {"tag": {"all": ["x" * 41]}}})

    assert result["fail"][0]["errcode"] == 4004
    assert result["fail"][0]["errmsg"].startswith("tag: ")


def test_tags_must_be_a_list(admin_key):
    result = apply(admin_key, {"userid": "u1", "add": {"tag": {"all": "vip"}}})

    assert result["fail"][0]["errmsg"].startswith("tag: ")


# --- item shape -----------------------------------------------------------------------------


def test_bare_form_is_taken_as_set(admin_key):
    apply(admin_key, {"userid": "u1", "set": {"tag": {"all": ["old"]}}})

    result = apply(
        admin_key, {"userid": "u1", "email": {"all": "a@example.com"}, "tag": {"all": ["new"]}}
    )

    assert result["success"] == ["u1"]
    assert emails("u1") == {"all": "a@example.com"}
    assert tags("u1") == {"new"}


def test_bare_form_and_set_together_fail_the_item(admin_key):
    result = apply(
        admin_key,
        {"userid": "u1", "email": {"all": "a@example.com"}, "set": {"tag": {"all": ["t"]}}},
    )

    assert result["fail"][0]["errcode"] == 4004
    assert result["fail"][0]["errmsg"].startswith("set: ")


def test_del_runs_after_set_and_add_in_one_item(admin_key):
    result = apply(
        admin_key,
        {
            "userid": "u1",
            "del": {"tag": {"all": ["b"]}, "email": {"all": None}},
            "set": {"tag": {"all": ["a", "b"]}, "email": {"all": "a@example.com"}},
        },
    )

    assert result["success"] == ["u1"]
    assert tags("u1") == {"a"}
    assert emails("u1") == {}


def test_fields_of_other_delivery_types_are_ignored(admin_key):
    result = apply(
        admin_key,
        {"userid": "u1", "set": {"phone": {"all": "13800000000"}, "email": {"all": "a@x.cn"}}},
    )

    assert result["success"] == ["u1"]
    assert emails("u1") == {"all": "a@x.cn"}


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"userid": "u1", "emial": {"all": "a@x.cn"}}, "emial"),
        ({"userid": "u1", "set": {"emails": {"all": "a@x.cn"}}}, "set.emails"),
        ({"userid": "u1", "set": ["email"]}, "set"),
        ({"userid": "u1", "set": {"email": "a@x.cn"}}, "set.email"),
        ({"userid": "", "set": {"email": {"all": "a@x.cn"}}}, "userid"),
        ({"userid": "has space"}, "userid"),
        ({"set": {"email": {"all": "a@x.cn"}}}, "userid"),
        ("u1", "item"),
    ],
)
def test_malformed_item_fails_with_4004_naming_the_field(admin_key, item, field):
    result = apply(admin_key, item)

    assert result["success"] == []
    assert result["fail"][0]["errcode"] == 4004
    assert result["fail"][0]["errmsg"].startswith(f"{field}: ")
    assert not UmsUser.objects.exists()


def test_bind_id_must_be_all_or_an_existing_channel_key(admin_key):
    result = apply(admin_key, {"userid": "u1", "set": {"email": {"nope": "a@example.com"}}})

    assert result["fail"][0]["errcode"] == 4004
    assert result["fail"][0]["errmsg"].startswith("bind_id: ")


def test_bind_id_all_is_case_insensitive(admin_key):
    apply(admin_key, {"userid": "u1", "set": {"email": {"ALL": "a@example.com"}}})

    assert emails("u1") == {"all": "a@example.com"}


def test_items_for_the_same_userid_apply_in_order(admin_key):
    result = apply(
        admin_key,
        {"userid": "u1", "set": {"email": {"all": "first@example.com"}}},
        {"userid": "u1", "set": {"email": {"all": "second@example.com"}}},
    )

    assert result["success"] == ["u1", "u1"]
    assert emails("u1") == {"all": "second@example.com"}


# --- upsert and atomicity -------------------------------------------------------------------


def test_unknown_userids_are_created_and_known_ones_updated(admin_key):
    UmsUser.objects.create(userid="known")

    apply(admin_key, {"userid": "known", "tag": {"all": ["t"]}}, {"userid": "new"})

    assert set(UmsUser.objects.values_list("userid", flat=True)) == {"known", "new"}
    assert tags("known") == {"t"}


def test_del_only_item_does_not_create_an_unknown_user(admin_key):
    result = apply(admin_key, {"userid": "ghost", "del": {"email": {"all": None}}})

    assert result["success"] == ["ghost"]
    assert not UmsUser.objects.filter(userid="ghost").exists()


def test_invalid_part_of_an_item_writes_nothing_of_it(admin_key):
    result = apply(
        admin_key,
        {"userid": "u1", "set": {"email": {"all": "a@example.com"}, "tag": {"all": [""]}}},
    )

    assert result["fail"][0]["errcode"] == 4004
    assert not UmsUser.objects.filter(userid="u1").exists()
    assert not UserEmailBinding.objects.exists()


def test_database_failure_mid_item_rolls_that_item_back_only(admin_key, monkeypatch):
    real = operations._write_tags

    def failing(user, changes):
        if user.userid == "broken":
            raise DatabaseError("disk full")
        real(user, changes)

    monkeypatch.setattr(operations, "_write_tags", failing)
    item = {"email": {"all": "a@example.com"}, "tag": {"all": ["t"]}}

    result = apply(admin_key, {"userid": "broken", **item}, {"userid": "fine", **item})

    assert result["success"] == ["fine"]
    assert result["fail"][0]["userid"] == "broken"
    assert result["fail"][0]["errcode"] == 5000
    assert "disk full" not in result["fail"][0]["errmsg"]
    assert not UmsUser.objects.filter(userid="broken").exists()
    assert emails("fine") == {"all": "a@example.com"}


def test_an_item_costs_a_bounded_number_of_queries(admin_key, shop, django_assert_max_num_queries):
    item = {
        "userid": "u1",
        "set": {"email": {"all": "a@x.cn", shop.channel_key: "b@x.cn"}, "tag": {"all": ["a"]}},
        "add": {"tag": {shop.channel_key: ["b", "c"]}},
        "del": {"tag": {"all": ["z"]}},
    }
    apply(admin_key, item)  # the user exists from now on

    with django_assert_max_num_queries(8):
        result = apply(admin_key, item)

    assert result["success"] == ["u1"]


# --- scopes ---------------------------------------------------------------------------------


def test_channel_writes_all_and_its_own_scope(shop):
    principal = ApiPrincipal(channel=shop)

    result = apply(
        principal,
        {"userid": "u1", "set": {"email": {"all": "a@x.cn", shop.channel_key: "s@x.cn"}}},
    )

    assert result["success"] == ["u1"]
    assert emails("u1") == {"all": "a@x.cn", shop.channel_key: "s@x.cn"}


def test_channel_is_refused_another_channels_scope_per_item(shop, games):
    principal = ApiPrincipal(channel=shop)

    result = apply(
        principal,
        {"userid": "u1", "set": {"email": {"all": "a@x.cn", games.channel_key: "g@x.cn"}}},
        {"userid": "u2", "del": {"tag": {games.channel_key: ["t"]}}},
        {"userid": "u3", "set": {"email": {"all": "c@x.cn"}}},
    )

    assert result["success"] == ["u3"]
    assert [f["userid"] for f in result["fail"]] == ["u1", "u2"]
    assert {f["errcode"] for f in result["fail"]} == {1016010}
    assert games.channel_key in result["fail"][0]["errmsg"]
    assert result["fail"][0]["errmsg"].startswith("bind_id: ")
    assert not UmsUser.objects.filter(userid="u1").exists()


def test_access_key_writes_any_channels_scope(admin_key, shop, games):
    result = apply(
        admin_key,
        {
            "userid": "u1",
            "set": {"email": {shop.channel_key: "s@x.cn", games.channel_key: "g@x.cn"}},
        },
    )

    assert result["success"] == ["u1"]
    assert emails("u1") == {shop.channel_key: "s@x.cn", games.channel_key: "g@x.cn"}


# --- batch limits ---------------------------------------------------------------------------


def test_more_than_1000_items_refuses_the_whole_batch(admin_key):
    items = [{"userid": f"u{n}"} for n in range(1001)]

    with pytest.raises(FieldError) as refused:
        user_opt_apply(principal=admin_key, items=items)

    assert str(refused.value) == "body: at most 1000 items"
    assert not UmsUser.objects.exists()


def test_exactly_1000_items_are_accepted(admin_key):
    result = user_opt_apply(principal=admin_key, items=[{"userid": f"u{n}"} for n in range(1000)])

    assert len(result["success"]) == 1000


@pytest.mark.parametrize("body", [{"userid": "u1"}, "u1", None])
def test_batch_must_be_an_array(admin_key, body):
    with pytest.raises(FieldError) as refused:
        user_opt_apply(principal=admin_key, items=body)

    assert refused.value.field == "body"


# --- delete ---------------------------------------------------------------------------------


def test_delete_removes_users_with_their_bindings_and_tags(admin_key, shop):
    apply(
        admin_key,
        {
            "userid": "u1",
            "email": {"all": "a@x.cn", shop.channel_key: "b@x.cn"},
            "tag": {"all": ["t"]},
        },
        {"userid": "keep", "email": {"all": "k@x.cn"}},
    )

    result = users_delete(principal=admin_key, userids=["u1"])

    assert result == {"success": ["u1"], "fail": []}
    assert list(UmsUser.objects.values_list("userid", flat=True)) == ["keep"]
    assert UserEmailBinding.objects.count() == 1
    assert not UserTag.objects.exists()


def test_delete_of_an_unknown_userid_succeeds(admin_key):
    assert users_delete(principal=admin_key, userids=["ghost"]) == {
        "success": ["ghost"],
        "fail": [],
    }


def test_delete_fails_invalid_userids_and_deletes_the_rest(admin_key):
    UmsUser.objects.create(userid="u1")

    result = users_delete(principal=admin_key, userids=["u1", "bad id", "", {"x": 1}])

    assert result["success"] == ["u1"]
    assert [(f["userid"], f["errcode"]) for f in result["fail"]] == [
        ("bad id", 4004),
        ("", 4004),
        ("", 4004),
    ]
    assert not UmsUser.objects.exists()


def test_delete_needs_the_access_key(shop):
    UmsUser.objects.create(userid="u1")

    with pytest.raises(ApiError) as refused:
        users_delete(principal=ApiPrincipal(channel=shop), userids=["u1"])

    assert refused.value.code == 1016011
    assert UmsUser.objects.filter(userid="u1").exists()


def test_delete_of_more_than_1000_userids_is_refused(admin_key):
    with pytest.raises(FieldError, match="at most 1000"):
        users_delete(principal=admin_key, userids=[f"u{n}" for n in range(1001)])

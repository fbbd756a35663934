"""The validators shared by the upload and the user API."""

import pytest

from users_app.validation import FieldError, clean_bind_id, clean_email, clean_tags, clean_userid


def test_email_domain_is_lower_cased_and_idna_encoded():
    assert clean_email(" Zhang.San@例子.中国 ") == "Zhang.San@xn--fsqu00a.xn--fiqs8s"
    assert clean_email("A@EXAMPLE.COM") == "A@example.com"


@pytest.mark.parametrize("value", [True, ["u1"], {"u": 1}])
def test_non_text_json_values_are_refused(value):
    with pytest.raises(FieldError, match="userid: must be text"):
        clean_userid(value)


def test_spreadsheet_numbers_are_userids():
    assert clean_userid(10001.0) == "10001"
    assert clean_userid(10001) == "10001"


def test_an_empty_bind_id_needs_a_default():
    assert clean_bind_id("", channel_keys=[], default="all") == "all"
    with pytest.raises(FieldError, match="bind_id: required"):
        clean_bind_id("", channel_keys=[])


def test_bind_id_all_is_case_insensitive_and_keys_must_exist():
    assert clean_bind_id("ALL", channel_keys=[]) == "all"
    assert clean_bind_id("a" * 24, channel_keys=["a" * 24]) == "a" * 24
    with pytest.raises(FieldError, match="bind_id"):
        clean_bind_id("b" * 24, channel_keys=["a" * 24])


def test_tags_split_on_ascii_and_full_width_commas_without_repeats():
    assert clean_tags("vip\uff0c北京, vip ,,new") == ["vip", "北京", "new"]


@pytest.mark.parametrize(
    "address",
    [
        "a@example.com",
        "first.last+tag@sub.Example.ORG",
        "o'brien@example.ie",
        "x@xn--fsqu00a.xn--55qx5d",
        "a..b@example.com",
        ".a@example.com",
        "a@example",
        "a@-example.com",
        "a@example.c",
        '"quoted local"@example.com',
        "a@[127.0.0.1]",
        "用户@例子.公司",
        "a@exa_mple.com",
    ],
)
def test_the_fast_path_agrees_with_django_s_validator(address):
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_email

    local, _at, domain = address.rpartition("@")
    try:
        expected = f"{local}@{domain.lower().encode('idna').decode()}"
        validate_email(expected)
    except (ValidationError, UnicodeError):
        expected = None
    try:
        got = clean_email(address)
    except FieldError:
        got = None
    assert got == expected

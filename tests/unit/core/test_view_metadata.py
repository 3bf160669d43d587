"""A modal's private_metadata, sealed by snapbot (SPEC 13.2, 14.7): the restore
confirmation's binding to the press that opened it."""

from __future__ import annotations

from bot.core import view_metadata

KEY = view_metadata.metadata_key("secret")
BINDING = view_metadata.Binding(
    user="UBOB",
    request_id=7,
    channel="C1",
    message_ts="1700000000.000100",
    thread_ts=None,
    channel_name="ops",
    response_url="https://hooks.slack.com/actions/T1/1/abc",
)


def test_a_binding_unseals_only_for_its_user_and_its_key():
    sealed = view_metadata.seal_binding(BINDING, KEY)
    assert view_metadata.unseal_binding(sealed, KEY, user="UBOB") == BINDING
    assert view_metadata.unseal_binding(sealed, KEY, user="UCAROL") is None
    assert (
        view_metadata.unseal_binding(sealed, view_metadata.metadata_key("x"), user="UBOB") is None
    )
    body, mac = sealed.split(".")
    assert view_metadata.unseal_binding(f"{body}x.{mac}", KEY, user="UBOB") is None
    for junk in ("", ".", "a.b.c", "é.é", "x" * 4000):
        assert view_metadata.unseal_binding(junk, KEY, user="UBOB") is None


def test_no_other_modals_seal_passes_for_a_binding_nor_a_binding_for_an_opener():
    opener = view_metadata.seal(view_metadata.Opener("UBOB", "C1"), KEY)
    assert view_metadata.unseal_binding(opener, KEY, user="UBOB") is None
    sealed = view_metadata.seal_binding(BINDING, KEY)
    assert view_metadata.unseal(sealed, KEY, user="UBOB") is None


def test_a_binding_too_long_for_slack_drops_its_response_url():
    long_url = view_metadata.Binding(
        user="UBOB",
        request_id=7,
        channel="C1",
        message_ts="1.2",
        response_url="https://hooks.slack.com/" + "a" * 3000,
    )
    sealed = view_metadata.seal_binding(long_url, KEY)
    assert len(sealed) <= view_metadata.MAX_LENGTH
    back = view_metadata.unseal_binding(sealed, KEY, user="UBOB")
    assert back is not None and back.response_url is None and back.message_ts == "1.2"

"""Nickname rules: look-alikes collide or are refused, real names of many scripts pass."""

import pytest

from tcpchatd.wire.errors import ProtocolError
from tcpchatd.wire.nicknames import check_nickname, nickname_key


def refused(name: str) -> str:
    with pytest.raises(ProtocolError) as info:
        check_nickname(name.encode("utf-8", "surrogatepass"), 32)
    assert info.value.code == "nickname_invalid"
    return info.value.message


@pytest.mark.parametrize("raw", [b"", b"a b", b"tab\there", b"bell\x07", b"x" * 33, b"\xff"])
def test_invalid_bytes_and_lengths(raw):
    with pytest.raises(ProtocolError) as info:
        check_nickname(raw, 32)
    assert info.value.code == "nickname_invalid"


@pytest.mark.parametrize("name", [
    "ann\ufe0f", "ann\u034f", "a\u200bnn", "a\u200dnn", "\u202eann", "ann\u2066", "an\u00adn",
    "ann\u180e", "\u3164", "\u115f", "\u1160", "\uffa0"])
def test_invisible_characters_are_refused(name):
    assert "invisible" in refused(name)


@pytest.mark.parametrize("name", ["\u2800", "\u2800\u2800", "\u2800\u0301"])
def test_blank_looking_names_are_refused(name):
    assert "blank" in refused(name)


@pytest.mark.parametrize("name", ["\u0430nn", "p\u0430ypal", "\u03a9mega", "ann\u03bf"])
def test_latin_mixed_with_cyrillic_or_greek_is_refused(name):
    assert "mixes scripts" in refused(name)


def test_a_script_not_recommended_for_identifiers_is_refused():
    assert "script" in refused("\u16a0\u16a2")  # runic


@pytest.mark.parametrize("name", ["10.0.0.1", "::1", "2001:db8::/32", "203.0.113.0/24",
                                  "\uff11\uff10.0.0.1"])
def test_a_name_that_parses_as_an_address_is_refused(name):
    assert "IP address" in refused(name)


@pytest.mark.parametrize("name", [
    "Zoë_42", "Müller", "josé", "иван", "ωμέγα", "山田太郎", "やまだ", "ヤマダ", "Yamada山田",
    "yamadaやまだ", "김철수", "Kim김", "王小明", "wangㄅㄆ", "مرحبا", "abcمرحبا", "שלום",
    "नमस्ते", "ann2", "x\u0301"])
def test_real_names_of_many_scripts_pass(name):
    assert check_nickname(name.encode(), 32) == name


@pytest.mark.parametrize("a,b", [("ann", "ANN"), ("ann", "\uff41\uff4e\uff4e"),
                                 ("stra\u00dfe", "STRASSE"), ("\u212bngstr\u00f6m", "\u00e5ngstr\u00f6m"),
                                 ("e\u0301", "\u00e9")])
def test_the_comparison_key_folds_case_width_and_composition(a, b):
    assert nickname_key(a) == nickname_key(b)


# Look-alikes that pass the script rules (one script, or Latin with Armenian) collide by
# the confusable skeleton of UTS #39 (issue 23, item 8)
LOOK_ALIKES = [("\u0440\u043e\u0440\u0435", "pope"),                      # all Cyrillic
               ("\u0455\u043e\u0440\u04bb\u0456\u0435", "sophie"),        # all Cyrillic
               ("b\u0585b", "bob"), ("j\u0585\u0570\u0578", "john"),      # Latin + Armenian
               ("\u0251nn", "ann"), ("\ua731cott", "scott"),              # Latin only
               ("b0b", "bob"), ("BILL", "bi11")]


@pytest.mark.parametrize("look_alike,name", LOOK_ALIKES)
def test_look_alikes_pass_the_rules_but_share_the_key(look_alike, name):
    assert check_nickname(look_alike.encode(), 32) == look_alike  # a name of its own
    assert nickname_key(look_alike) == nickname_key(name)


@pytest.mark.parametrize("a,b", [("ann", "anne"), ("bob", "rob"), ("\u0438\u0432\u0430\u043d",
                                                                  "ivan")])
def test_different_names_keep_different_keys(a, b):
    assert nickname_key(a) != nickname_key(b)

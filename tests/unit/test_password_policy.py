"""The one password policy (``shared.operators.secrets.check_password``): a length, and zxcvbn's score."""

import pytest

from shared import operators

check_password = operators.secrets.check_password


@pytest.mark.parametrize(
    ("password", "name", "refusal"),
    [
        ("short", "alice", "at least 12 characters"),
        (" " * 12, "alice", 'too easy to guess.*Repeats like "aaa"'),
        ("a" * 12, "alice", 'too easy to guess.*Repeats like "aaa"'),
        ("a" * 100, "alice", "too easy to guess"),  # estimated on its first characters
        ("alice.smith1", "alice.smith", "too easy to guess"),
        ("smithsmith12", "alice.smith", "too easy to guess"),  # a part of the name counts too
        ("ops-robot_2024", "ops-robot_2024", "too easy to guess"),
        ("password1234", "alice", "too easy to guess.*very common password"),
        ("qwertyuiop123", "alice", "too easy to guess"),
        ("x" * 1025, "alice", "at most 1024 characters"),
    ],
    ids=[
        "short",
        "spaces",
        "one-letter",
        "long-repeat",
        "name",
        "name-part",
        "name-itself",
        "common",
        "keyboard",
        "too-long",
    ],
)
def test_a_short_repeated_common_or_name_based_password_is_refused_with_advice(password, name, refusal):
    with pytest.raises(ValueError, match=refusal):
        check_password(password, name)


@pytest.mark.parametrize("password", ["ochre lantern vivid", "Qx7!vR2#mT9p", "a long passphrase one"])
def test_a_hard_to_guess_password_is_accepted_as_it_is(password):
    assert check_password(password, "alice") == password


def test_the_refusal_says_what_to_change():
    with pytest.raises(ValueError) as refused:
        check_password("aaaaaaaaaaaa", "alice")
    message = str(refused.value)
    assert f"at least {operators.secrets.MIN_PASSWORD_SCORE} needed" in message
    assert "Add another word or two" in message  # zxcvbn's own suggestion

"""The conversation normaliser refuses a message whose role is not a string with the same
ValueError as an unknown role (readers turn it into a DataError naming file and line)."""

from __future__ import annotations

import pytest

from minillm_core.schema import normalize_conversation


@pytest.mark.parametrize("role", [["user"], {"r": 1}, 3, None])
def test_a_role_that_is_not_a_string_is_an_unknown_role(role):
    with pytest.raises(ValueError, match="message 0: unknown role"):
        normalize_conversation([{"role": role, "content": "hi"}])


def test_aliases_still_map_to_our_roles():
    got = normalize_conversation([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}])
    assert [m["role"] for m in got] == ["user", "assistant"]

import pytest

from attention_lab.attention.address import BlockAddress, BlockSelector

A = BlockAddress


@pytest.mark.parametrize("text,hit,miss", [
    ("", [A("input", 4), A("double", 0)], []),
    ("input.4-8", [A("input", 4, 1), A("input", 8)], [A("input", 3), A("output", 4)]),
    ("input.4-8, output.*", [A("output", 11, 2), A("input", 5)], [A("middle", 0)]),
    ("input.4.1", [A("input", 4, 1)], [A("input", 4, 0)]),
    ("double.*", [A("double", 18)], [A("single", 0)]),
    ("single.0-9; block.20", [A("single", 9), A("block", 20)], [A("single", 10), A("block", 2)]),
    ("*.3", [A("double", 3), A("output", 3, 1)], [A("double", 4)]),
    ("MIDDLE", [A("middle", 0)], [A("input", 0)]),
])
def test_selector_matches(text, hit, miss):
    sel = BlockSelector.parse(text)
    assert all(sel.matches(a) for a in hit)
    assert not any(sel.matches(a) for a in miss)


@pytest.mark.parametrize("text,fragment", [
    ("input.a", "malformed index"), ("input.4-2", "backwards"), ("inptu.4", "unknown block group"),
    ("input.1.2.3", "not of the form"), ("input.4,,output.1", "empty term"), (".4", "not of the form"),
])
def test_selector_errors(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        BlockSelector.parse(text)


def test_no_block_matches_only_empty_selector():
    assert BlockSelector.parse("").matches(None)
    assert not BlockSelector.parse("input.*").matches(None)


def test_unmatched_terms_and_formatting():
    sel = BlockSelector.parse("input.1, double.*, output.99")
    addresses = [A("input", 1), A("output", 2)]
    assert sel.unmatched_terms(addresses) == ["double.*", "output.99"]
    assert str(A("input", 4, 1)) == "input.4.1" and str(A("single", 12)) == "single.12"
    assert str(BlockSelector.parse("")) == "all"

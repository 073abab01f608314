"""Block addresses and block selectors: one syntax for UNet and DiT attention sites.

An address names where an attention call sits: ``input.4.1`` (UNet input block 4, transformer depth 1),
``middle.0.0``, ``output.7.0``, ``double.3``, ``single.12``, ``block.20``. A selector is a comma-separated
list of terms ``group[.range[.range]]`` with ``range`` one of ``*``, ``N`` or ``N-M``; the empty selector
matches every site. Example: ``input.4-8, output.*`` or ``double.*, single.0-9``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

UNET_GROUPS = ("input", "middle", "output")
DIT_GROUPS = ("double", "single", "block")
GROUPS = UNET_GROUPS + DIT_GROUPS

SELECTOR_HELP = (
    "write comma-separated terms group[.index[.depth]] where group is one of "
    f"{', '.join(GROUPS)} or *, and index/depth are N, N-M or * (e.g. 'input.4-8, output.*' or "
    "'double.*'); leave it empty for all blocks; AttnLabInspect lists a model's addresses"
)


@dataclass(frozen=True, order=True)
class BlockAddress:
    """Where an attention call sits: group (input/middle/output/double/single/block), index, transformer depth."""

    group: str
    index: int
    depth: int = 0

    def __str__(self) -> str:
        if self.group in UNET_GROUPS:
            return f"{self.group}.{self.index}.{self.depth}"
        return f"{self.group}.{self.index}"


@dataclass(frozen=True)
class _Range:
    lo: int | None  # None: any
    hi: int | None

    def contains(self, value: int) -> bool:
        return self.lo is None or self.lo <= value <= self.hi


_ANY = _Range(None, None)
_RANGE_RE = re.compile(r"^(\*|\d+|\d+-\d+)$")


def _parse_range(text: str, term: str) -> _Range:
    if not _RANGE_RE.match(text):
        raise ValueError(f"'{term}' has a malformed index '{text}'")
    if text == "*":
        return _ANY
    lo, _, hi = text.partition("-")
    lo_i, hi_i = int(lo), int(hi or lo)
    if hi_i < lo_i:
        raise ValueError(f"'{term}' has a range that runs backwards ({text})")
    return _Range(lo_i, hi_i)


@dataclass(frozen=True)
class _Term:
    group: str  # '*' for any group
    index: _Range
    depth: _Range

    def matches(self, address: BlockAddress) -> bool:
        return ((self.group == "*" or self.group == address.group)
                and self.index.contains(address.index) and self.depth.contains(address.depth))


def _parse_term(term: str) -> _Term:
    parts = term.split(".")
    if len(parts) > 3 or not parts[0]:
        raise ValueError(f"'{term}' is not of the form group[.index[.depth]]")
    group = parts[0].lower()
    if group not in GROUPS and group != "*":
        raise ValueError(f"'{term}' names an unknown block group '{parts[0]}'")
    ranges = [_parse_range(p.strip(), term) for p in parts[1:]] + [_ANY, _ANY]
    return _Term(group, ranges[0], ranges[1])


@dataclass(frozen=True)
class BlockSelector:
    """A parsed ``blocks`` string; ``matches(address)`` tells whether a site is selected."""

    text: str
    terms: tuple[_Term, ...]

    @classmethod
    def parse(cls, text: str | None) -> "BlockSelector":
        """Parse a selector; raises ValueError naming the bad term (the caller adds node and fix)."""
        text = (text or "").strip()
        raw = [t.strip() for t in re.split(r"[,;]", text)] if text else []
        if any(not t for t in raw):
            raise ValueError(f"'{text}' has an empty term (a stray comma)")
        return cls(text, tuple(_parse_term(t) for t in raw))

    @property
    def selects_all(self) -> bool:
        return not self.terms

    def matches(self, address: BlockAddress | None) -> bool:
        if self.selects_all:
            return True
        return address is not None and any(t.matches(address) for t in self.terms)

    def unmatched_terms(self, addresses) -> list[str]:
        """The terms that select none of ``addresses`` (for a 'matches nothing' error)."""
        addresses = list(addresses)
        parts = [p.strip() for p in re.split(r"[,;]", self.text)] if self.text else []
        return [p for p, t in zip(parts, self.terms) if not any(t.matches(a) for a in addresses)]

    def __str__(self) -> str:
        return self.text or "all"

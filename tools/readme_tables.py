"""Generate the README's tables of effects and model families from the code, so they cannot drift.

`python -m tools.readme_tables` prints them; `--write` replaces the generated block in README.md.
A host-tier test checks that README.md holds exactly what this prints.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys

from tools.hostenv import PACK_ROOT

BEGIN, END = "<!-- BEGIN GENERATED TABLES -->", "<!-- END GENERATED TABLES -->"
NOT_REACHED = ("HunyuanDiT, PixArt, Hunyuan3D 2.1 and WAN 2.2 S2V: their attention calls carry no "
               "transformer_options, so no override reaches them. Cosmos, HiDream, Lumina 2 and Omnigen 2 reach "
               "the override but publish no block replace to address blocks with on host 0.3.64; they are not "
               "listed as reached until tested. SVD and other UNet video models: not yet tested.")
HOW = {"unet": "attention override + attn1/attn2 patch lists (tags only)",
       "dit": "attention override + chained block replaces (tags only)"}


def family_table() -> str:
    from attention_lab.nodes.families import FAMILIES
    rows = ["| family | attention kinds reached | block addresses | how |", "|---|---|---|---|"]
    for f in FAMILIES:
        groups = "input.N.D, middle.0.D, output.N.D" if f.arch == "unet" else ", ".join(
            f"{g.group}.N" for g in f.dit_groups)
        rows.append(f"| {f.label} | {', '.join(f.kinds)} | {groups} | {HOW[f.arch]} |")
    return "\n".join(rows) + f"\n\nNot reached: {NOT_REACHED}\n"


def node_table() -> str:
    from attention_lab.nodes.extension import NODES
    rows = ["| node | display name | what it does |", "|---|---|---|"]
    for node in NODES:
        s = node.define_schema()
        first = re.split(r"(?<!al\.)(?<=\.)\s", s.description, maxsplit=1)[0]  # not after "et al."
        rows.append(f"| `{s.node_id}` | {s.display_name} | {first} |")
    return "\n".join(rows) + "\n"


def tables() -> str:
    return f"{BEGIN}\n### Effects and nodes\n\n{node_table()}\n### Model families\n\n{family_table()}{END}"


def write_readme() -> None:
    path = PACK_ROOT / "README.md"
    text = path.read_text()
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    path.write_text(text[:start] + tables() + text[stop:])


def main(argv=None) -> int:
    from tools import hostenv
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite the generated block in README.md")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    hostenv.bootstrap()
    hostenv.register_pack()
    if ns.write:
        write_readme()
    else:
        sys.stdout.write(tables() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

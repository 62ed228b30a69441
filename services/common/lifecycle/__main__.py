"""`python -m services.common.lifecycle [--update FILE]`: print the state diagrams and tables, or
rewrite them between the `<!-- lifecycle:begin -->` and `<!-- lifecycle:end -->` lines of FILE."""

import sys
from pathlib import Path

from services.common.lifecycle.table import JOB_TRANSITIONS, SHARD_TRANSITIONS, markdown_table, mermaid

BEGIN, END = "<!-- lifecycle:begin -->\n", "<!-- lifecycle:end -->\n"


def render() -> str:
    parts = []
    for title, table in (("Job", JOB_TRANSITIONS), ("Shard", SHARD_TRANSITIONS)):
        parts += [f"#### {title} states", "", "```mermaid", mermaid(table), "```", ""]
        parts += [markdown_table(table), ""]
    return "\n".join(parts)


def update(path: Path) -> None:
    text = path.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    path.write_text(head + BEGIN + render() + END + tail)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--update":
        update(Path(sys.argv[2]))
    else:
        print(render(), end="")

"""`python -m services.common.lifecycle`: print the state diagrams and tables for the docs."""

from services.common.lifecycle.table import JOB_TRANSITIONS, SHARD_TRANSITIONS, markdown_table, mermaid


def render() -> str:
    parts = []
    for title, table in (("Job", JOB_TRANSITIONS), ("Shard", SHARD_TRANSITIONS)):
        parts += [
            f"#### {title} states",
            "",
            "```mermaid",
            mermaid(table),
            "```",
            "",
            markdown_table(table),
            "",
        ]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")

"""README.md's settings table, generated from the settings' own declarations
(aimo_lib.fields.setting): `python -m aimo_lib.settings_table --write README.md`."""

from __future__ import annotations

from .config import ENV_PREFIX, SETTINGS, SHORT_FLAGS, Setting, shown_default

__all__ = ["README_MARKERS", "settings_markdown", "write_settings"]

README_MARKERS = ("<!-- settings:start -->", "<!-- settings:end -->")


def settings_markdown() -> str:
    """Every setting as a Markdown table (README.md's, between README_MARKERS): its name (the
    YAML key), its notebook, environment and flag spellings, its default and its help, all
    from the fields' own metadata (aimo_lib.fields.setting). Rows are grouped by section, in
    the order SETTINGS first lists each section."""
    sections: dict[str, list[Setting]] = {}
    for s in SETTINGS.values():
        sections.setdefault(s.section, []).append(s)
    lines = ["| setting | notebook · environment · flag | default | what it sets |",
             "|---|---|---|---|"]
    for section, rows in sections.items():
        lines.append(f"| **{section}** | | | |")
        for s in rows:
            flags = [f"--{s.name.replace('_', '-')}", *SHORT_FLAGS.get(s.name, ())]
            spellings = " · ".join(f"`{x}`" for x in (s.name.upper(), ENV_PREFIX + s.name.upper(),
                                                       *flags))
            lines.append(f"| `{s.name}` | {spellings} | `{shown_default(s.default)}` | "
                         f"{_cell(s.help)} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Help text as one table cell: one line, its pipes and backticks shown as written."""
    return " ".join(text.split()).replace("|", "\\|").replace("`", "\\`")


def write_settings(path: str) -> bool:
    """Replace the table between README_MARKERS in `path` with settings_markdown(); whether
    the file changed."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    start, end = README_MARKERS
    head, found, rest = text.partition(start)
    _, found_end, tail = rest.partition(end)
    if not found or not found_end:
        raise SystemExit(f"{path} has no {start} ... {end} markers")
    new = f"{head}{start}\n{settings_markdown()}{end}{tail}"
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    return new != text


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m aimo_lib.settings_table",
        description="print every setting as a Markdown table (README.md's settings table)")
    parser.add_argument("--write", metavar="README", default=None,
                        help="replace the table between the markers in this file instead")
    args = parser.parse_args()
    if args.write:
        changed = write_settings(args.write)
        print(f"{args.write}: settings table {'updated' if changed else 'already current'}")
    else:
        print(settings_markdown(), end="")

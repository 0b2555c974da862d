"""A page as a browser reads it, for tests: its tags, attribute values and text (entities
decoded), and the rows of the front page's module table."""

from __future__ import annotations

from html.parser import HTMLParser


class Page(HTMLParser):
    """The parsed page: every tag, every attribute value and the text, as a browser reads
    them (entities decoded)."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str, str]] = []  # (tag, name, value)
        self.text: list[str] = []
        self.rows: list[list[str]] = []  # the module table's body rows, cell texts
        self.title = ""
        self._in_title = False
        self._table = False
        self._body = False
        self._cell: list[str] | None = None
        self.feed(source)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_title = tag == "title"
        self.attributes += [(tag, name, value or "") for name, value in attrs]
        if tag == "table" and ("id", "module-table") in attrs:
            self._table = True
        if self._table and tag == "tbody":
            self._body = True
        if self._table and self._body and tag == "tr":
            self.rows.append([])
        if self._table and self._body and tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False
        if tag == "table":
            self._table = False
        if tag == "tbody":
            self._body = False
        if tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_title:
            self.title += data
        if self._cell is not None:
            self._cell.append(data)

    @property
    def all_text(self) -> str:
        return "".join(self.text)

"""YAML input is bounded: an alias bomb ("billion laughs"), too many aliases or a huge
file is a positioned one-line config error, not a daemon eating memory."""

from __future__ import annotations

import io
from pathlib import Path

from gateway.config.loader import run_check
from gateway.yamlsrc import MAX_ALIASES, MAX_FILE_BYTES, MAX_NODES

HEAD = "site: {name: x}\ngateways: [{id: gw1}]\n"


def check(tmp_path: Path, text: str) -> tuple[int, list[str]]:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    out = io.StringIO()
    code = run_check(str(path), out)
    return code, [line.replace(str(path), "site.yaml") for line in out.getvalue().splitlines()]


def laughs(levels: int) -> str:
    """Nine-fold nesting: ``levels`` levels expand to 9**levels values from a few lines."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_a_positioned_error(tmp_path: Path) -> None:
    # 9**6 = 531,441 values: past the limit, yet small enough that the old loader, which
    # had no limit, finished (and accepted it) rather than exhausting the test machine
    # the second alias of line 8 is where the running total of values passes the limit
    code, lines = check(tmp_path, HEAD + laughs(6))
    assert code == 1
    assert lines == [f"site.yaml:8:14: too many YAML aliases (limit {MAX_NODES} values once "
                     "expanded): the aliases here expand past it; write the values out",
                     "site.yaml: 1 error"]


def test_too_many_aliases_are_refused_at_the_one_past_the_limit(tmp_path: Path) -> None:
    uses = "\n".join("  - *v" for _ in range(MAX_ALIASES + 5))
    code, lines = check(tmp_path, HEAD + "base: &v 1\nmany:\n" + uses + "\n")
    assert code == 1
    line = 5 + MAX_ALIASES  # the first alias is on line 5
    assert lines[0] == (f"site.yaml:{line}:5: too many YAML aliases (limit {MAX_ALIASES}): a "
                        "site config needs far fewer; write the values out")


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    code, lines = check(tmp_path, HEAD + "# padding\n" * (MAX_FILE_BYTES // 10 + 1))
    assert code == 1
    assert lines[0] == (f"site.yaml: file too large (over {MAX_FILE_BYTES // (1024 * 1024)} "
                        "MiB; a site config is far smaller)")


def test_ordinary_aliases_still_work(tmp_path: Path) -> None:
    code, lines = check(tmp_path, HEAD + "historian: &h {retention_days: 7}\n"
                                         "x-unused: [*h, *h]\n")
    # the aliases load; the unknown top-level key is the only complaint
    assert code == 1 and "x-unused: unknown key" in lines[0] and len(lines) == 2

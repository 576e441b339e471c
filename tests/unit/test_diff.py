"""The pure parts of ``appimg diff`` and ``realms config``: comparing two trees (no root
needed: owners are not changed here, the system tests do that) and editing a realm's config
file line by line."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from realms.appimg.diff import MAX_DEPTH, Side, compare_trees
from realms.cli.diff_handlers import shown
from realms.errors import InvalidInput
from realms.realm_config import parse_value, remove_key, set_key


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.utime(path, ns=(0, 1_000_000_123))
    return root


def _settle(*roots: Path) -> None:
    """The same mtime on every directory, so that only what a test changes differs."""
    for root in roots:
        for directory, _, _ in os.walk(root):
            os.utime(directory, ns=(0, 5_000_000_000))


def test_identical_trees(tmp_path: Path) -> None:
    files = {"etc/passwd": "root:x:0:0\n", "usr/bin/tool": "#!/bin/sh\n"}
    old, new = _tree(tmp_path / "a", files), _tree(tmp_path / "b", files)
    _settle(old, new)
    assert compare_trees(old, new).to_json() == {"added": [], "removed": [], "changed": []}


def test_what_changed(tmp_path: Path) -> None:
    files = {"etc/passwd": "root:x:0:0\n", "etc/mode": "", "etc/when": "", "dir/x": ""}
    old, new = _tree(tmp_path / "a", files), _tree(tmp_path / "b", files)
    (new / "etc/passwd").write_text("ROOT:x:0:0\n")  # same size, other bytes
    os.utime(new / "etc/passwd", ns=(0, 1_000_000_123))
    (new / "etc/mode").chmod(0o600)
    os.utime(new / "etc/when", ns=(0, 1_000_000_124))  # one nanosecond later
    (new / "dir/x").unlink()
    (new / "dir").rmdir()
    (new / "dir").symlink_to("/etc")  # a symlink to the host's /etc: never followed
    (new / "new/deeper").mkdir(parents=True)
    (new / "new/deeper/file").write_text("")
    (old / "link").symlink_to("a")
    (new / "link").symlink_to("b")
    os.utime(old / "link", ns=(0, 7), follow_symlinks=False)
    os.utime(new / "link", ns=(0, 7), follow_symlinks=False)
    _settle(old, new)
    result = compare_trees(old, new)
    assert result.added == ["/new", "/new/deeper", "/new/deeper/file"]
    assert result.removed == ["/dir/x"]
    changed = {c.path: c.what for c in result.changed}
    assert changed.pop("/dir")[0] == "type"
    assert changed == {
        "/etc/mode": ["mode"],
        "/etc/passwd": ["content"],
        "/etc/when": ["mtime"],
        "/link": ["target"],
    }


def test_ext4_side_compares_whole_seconds_and_skips_lost_found(tmp_path: Path) -> None:
    old = _tree(tmp_path / "a", {"f": ""})
    new = _tree(tmp_path / "b", {"f": "", "lost+found/.keep": ""})
    os.utime(new / "f", ns=(0, 1_000_000_999))
    _settle(old, new)
    assert compare_trees(old, Side(new, ext4=True)).same
    assert compare_trees(old, new).added == ["/lost+found", "/lost+found/.keep"]


def test_xattrs(tmp_path: Path) -> None:
    old, new = _tree(tmp_path / "a", {"f": ""}), _tree(tmp_path / "b", {"f": ""})
    try:
        os.setxattr(new / "f", "user.note", b"x")
    except OSError:
        pytest.skip("no user xattrs on this filesystem")
    _settle(old, new)
    assert [(c.path, c.what) for c in compare_trees(old, new).changed] == [("/f", ["xattrs"])]


def test_too_deep_is_refused(tmp_path: Path) -> None:
    old = tmp_path / "a"
    old.mkdir()
    new = tmp_path / "b"
    deep = new
    for _ in range(MAX_DEPTH + 1):
        deep = deep / "d"
    os.makedirs(deep)
    with pytest.raises(InvalidInput, match="nested directories"):
        compare_trees(old, new)


def test_shown_paths_are_one_line() -> None:
    assert shown("/etc/new\nline") == "/etc/new\\nline"
    assert shown(os.fsdecode(b"/bad\xff")) == "/bad\\xff"
    assert shown("/été") == "/été"


# realms config: editing the file

TEMPLATE = """# realm box

# the appimg
realmfs = "base"

# bind /dev/kvm
# use-kvm = false

# many
keep = [
    "/a",
    "/b",
]
"""


def test_set_replaces_the_commented_template_line() -> None:
    edited = set_key(TEMPLATE, "use-kvm", "true")
    assert edited == TEMPLATE.replace("# use-kvm = false", "use-kvm = true")


def test_set_replaces_a_value_over_several_lines_and_appends_new_keys() -> None:
    edited = set_key(TEMPLATE, "keep", '["/c"]')
    assert tomllib.loads(edited)["keep"] == ["/c"]
    assert '"/a"' not in edited and edited.startswith("# realm box\n\n# the appimg\n")
    added = set_key(TEMPLATE, "use-gpu", "true")
    assert added == TEMPLATE + "use-gpu = true\n"  # after the last key
    assert tomllib.loads(added)["use-gpu"] is True


def test_keys_go_before_tables() -> None:
    text = "a = 1\n\n[zone]\nb = 2\n"
    assert tomllib.loads(set_key(text, "c", "3")) == {"a": 1, "c": 3, "zone": {"b": 2}}
    assert set_key("", "c", "3") == "c = 3\n"
    assert set_key("# only a comment", "c", "3") == "# only a comment\nc = 3\n"


def test_remove() -> None:
    removed = remove_key(TEMPLATE, "keep")
    assert tomllib.loads(removed) == {"realmfs": "base"}
    assert removed.endswith("# many\n")
    back = remove_key(TEMPLATE, "realmfs", '# realmfs = ""')
    assert '# realmfs = ""\n' in back and "# the appimg\n" in back
    assert remove_key(TEMPLATE, "nothing") == TEMPLATE


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("3", 3),
        ('"x y"', "x y"),
        ('["a", "b"]', ["a", "b"]),
        ("private", "private"),
        ("1\nother = 2", "1\nother = 2"),
        ("2024-01-01", "2024-01-01"),
        ("[1,", "[1,"),
    ],
)
def test_values_from_the_command_line(text: str, value: object) -> None:
    assert parse_value(text) == value

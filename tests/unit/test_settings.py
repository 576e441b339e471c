"""The settings framework: every declaration is consistent with itself, every generated file
reads back as the defaults, errors are one line naming the file, the key and what was expected.

Pure unit tests: no store, no devices (only files under tmp_path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from realms import config, settings
from realms.builder import config as build_config
from realms.builder import modules, schema
from realms.errors import InvalidInput
from realms.kinds import Isolation, VerityMode

TABLES: dict[str, list[settings.Setting[Any]]] = {
    "global": config.GLOBAL_SETTINGS,
    "realm": config.REALM_SETTINGS,
    "build": schema.KEYS,
    "build [user]": schema.USER_KEYS,
    "build [modules]": schema.MODULE_KEYS,
    "build [[files]]": schema.FILE_KEYS,
}


@pytest.mark.parametrize("table", TABLES)
def test_every_default_and_example_passes_its_own_type(table: str) -> None:
    names = [setting.name for setting in TABLES[table]]
    assert len(names) == len(set(names)), "a key declared twice"
    for setting in TABLES[table]:
        assert setting.doc and setting.type.expected
        if not setting.required:
            assert setting.parse(setting.default, table) == setting.default
        if setting.example is not None:
            assert setting.parse(setting.example, table) == setting.example


def test_the_global_template_reads_as_the_defaults_also_with_realm_defaults_uncommented(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(config.global_template())
    loaded = config.load_global(path)
    assert loaded.values == settings.defaults(config.GLOBAL_SETTINGS)
    assert loaded.realm_defaults == settings.defaults(config.REALM_SETTINGS)
    # Uncommenting the [realm-defaults] table and its keys gives a valid config.
    text = config.global_template()
    head, tail = text.split("# [realm-defaults]")
    uncommented = [line.removeprefix("# ") if " = " in line else line for line in tail.splitlines()]
    path.write_text(head + "[realm-defaults]\n" + "\n".join(uncommented))
    loaded = config.load_global(path)
    assert loaded.realm_defaults == settings.defaults(config.REALM_SETTINGS)


def test_a_realm_template_sets_only_what_it_is_given(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(config.commented_template(config.REALM_SETTINGS, "realm x", {"realmfs": "b"}))
    assert 'realmfs = "b"' in path.read_text()
    fallback = {**settings.defaults(config.REALM_SETTINGS), "use-gpu": True}
    loaded = config.load_realm(path, fallback)
    assert loaded == {**fallback, "realmfs": "b"}


def test_the_build_template_reads_as_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "build.toml"
    path.write_text(schema.template())
    loaded = build_config.load(path)
    assert build_config.inputs_digest(loaded) == build_config.inputs_digest(build_config.load(None))
    for name, doc in schema.BUILTIN_MODULES.items():
        assert f"{name}: {doc}" in path.read_text()


def test_choices_become_the_kinds_enums(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('verity = "kernel"\n[realm-defaults]\nisolation = "privileged"\n')
    loaded = config.load_global(path)
    assert loaded.verity is VerityMode.KERNEL
    assert config.ISOLATION.of(loaded.realm_defaults) is Isolation.PRIVILEGED
    # "none" is an enforcement, not a policy one can choose.
    path.write_text('verity = "none"\n')
    with pytest.raises(InvalidInput, match='verity: expected one of "auto", "kernel", "userspace"'):
        config.load_global(path)


def test_an_error_is_one_line_naming_file_key_and_expectation() -> None:
    uid = schema.USER_KEYS[1]
    with pytest.raises(InvalidInput) as raised:
        uid.parse(True, "b.toml [user]")
    assert raised.value.message == (
        f"b.toml [user]: uid: expected a whole number from 0 to {schema.MAX_UID}, got True"
    )
    with pytest.raises(InvalidInput) as raised:
        settings.parse(schema.KEYS, {"mirror": "x" * 5000}, "b.toml")
    message = raised.value.message
    assert "\n" not in message and len(message) < 300 and "(5002 characters)" in message
    with pytest.raises(InvalidInput) as raised:
        settings.parse(schema.FILE_KEYS, {"path": "/etc/x"}, "b.toml [[files]] #1")
    assert raised.value.message == "b.toml [[files]] #1: source: missing"
    with pytest.raises(InvalidInput) as raised:
        settings.parse(config.REALM_SETTINGS, {"use-kvm": True, "colour": 1}, "c")
    assert raised.value.message == "c: unknown key 'colour'"
    assert raised.value.hint and "use-kvm" in raised.value.hint


def test_the_reference_documents_every_key() -> None:
    text = config.reference() + schema.reference()
    for table in TABLES.values():
        for setting in table:
            assert f"| `{setting.name}` | {setting.type.expected} |" in text


def test_every_builtin_module_has_a_script_and_its_package_is_a_default() -> None:
    loaded = build_config.load(None)
    for name, module in modules.BUILTINS.items():
        assert modules.builtin_script(name, loaded).startswith("set -eu\n")
        assert module.needs is None or module.needs in schema.DEFAULT_PACKAGES
    assert set(schema.DEFAULT_BEFORE + schema.DEFAULT_AFTER) <= set(modules.BUILTINS)


DOCUMENT = Path(__file__).resolve().parents[2] / "docs/settings.md"
REGENERATE = (
    ".venv/bin/python -c "
    "'import tests.unit.test_settings as t; t.DOCUMENT.write_text(t.document())'"
)


def document() -> str:
    """docs/settings.md, as the declarations make it."""
    return (
        "# Settings\n\nGenerated from the declarations in src/realms/config.py and "
        "src/realms/builder/schema.py; do not edit.\n\n"
        + config.reference()
        + "\n"
        + schema.reference()
    )


def test_the_committed_settings_document_is_generated_from_the_declarations() -> None:
    assert DOCUMENT.read_text() == document(), f"docs/settings.md is stale: {REGENERATE}"

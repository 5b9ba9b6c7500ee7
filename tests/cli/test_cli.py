"""The command-line layer: verb discovery, help texts, and one-line errors."""

from __future__ import annotations

import pytest

from hydrapicker import cli
from hydrapicker.errors import HydraPickerError


def test_every_verb_module_has_a_help_text_and_a_main():
    modules = cli._verb_modules()
    assert "demo" in modules
    for name, module in modules.items():
        assert (module.__doc__ or "").strip(), f"verb {name} has no docstring (its --help)"
        assert callable(getattr(module, "add_arguments", None)), name
        assert callable(getattr(module, "main", None)), name


def test_help_of_every_verb_exits_cleanly(capsys):
    for name in cli._verb_modules():
        with pytest.raises(SystemExit) as exit_info:
            cli.main([name, "--help"])
        assert exit_info.value.code == 0
        assert name in capsys.readouterr().out


def test_user_error_prints_one_line_and_exits_nonzero(monkeypatch, capsys):
    module = cli._verb_modules()["demo"]

    def failing_main(args):
        raise HydraPickerError("mic.mrc: the image is constant")

    monkeypatch.setattr(module, "main", failing_main)
    status = cli.main(["demo"])
    err = capsys.readouterr().err
    assert status == 1
    assert err == "hydrapicker demo: error: mic.mrc: the image is constant\n"


def test_unknown_verb_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["no-such-verb"])
    assert exit_info.value.code == 2

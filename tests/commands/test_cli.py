"""The command line: every command and every option is described in --help."""

import argparse
from pathlib import Path

import pytest

from harness.cli import COMMANDS, build_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_top_level_help_lists_every_command_with_a_description(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_of_every_command_has_help(name, capsys):
    sub = _subparsers(build_parser())[name]
    assert sub.description, f"{name} has no description"
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help != argparse.SUPPRESS, f"{name}: {action.option_strings or action.dest} has no help"
    with pytest.raises(SystemExit):
        sub.parse_args(["--help"])
    out = capsys.readouterr().out
    for action in sub._actions:
        for opt in action.option_strings:
            assert opt in out


def test_an_unexpected_exception_is_exit_70_not_a_failed_gate(monkeypatch, capsys):
    """Issue 31: a crash exited 1, the code CI reads as "a gate failed"."""
    import harness.commands.suites as suites_cmd
    from harness.cli import INTERNAL_ERROR, main

    def boom(args):
        raise RuntimeError("something the harness did not expect")

    monkeypatch.setattr(suites_cmd, "run", boom)
    assert main(["suites", "list"]) == INTERNAL_ERROR == 70
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error: RuntimeError: something the harness did not expect" in err[0], err
    assert "not a verdict on the adapter" in err[0]
    saved = Path(err[0].rsplit("traceback in ", 1)[1])  # one line here, the whole traceback in a file
    assert "Traceback" in saved.read_text() and "boom" in saved.read_text()

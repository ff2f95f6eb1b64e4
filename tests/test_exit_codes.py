"""The exit-code table: the numbers are an interface (cron jobs and alerts test them), `--help`
lists every one with its meaning, and every error class exits with the code documented for it.
No database needed."""

import re
from pathlib import Path

from click.testing import CliRunner

from pg_replication import exceptions
from pg_replication.exceptions import ExitCode, ReplicationError
from pg_replication.failures import describe_failure
from pipeline_main import cli

# The published numbers (README's table): changing one breaks the scripts that test it.
NUMBERS = {"SUCCESS": 0, "UNEXPECTED": 1, "CONFIG": 2, "SOURCE_CONNECTION": 3,
           "SOURCE_NOT_READY": 4, "SLOT_IN_USE": 5, "SLOT": 6, "LOAD": 7, "DECODE": 8,
           "CHECK_FAILED": 9, "COPY_MISSING": 10}

# Every ReplicationError class and the code it exits with. A new class fails the test until it is
# added here (with the code it is documented with).
CLASS_CODES = {
    "ReplicationError": 1,  # raised bare only for states that should not happen
    "ConfigError": 2,
    "SourceConnectionError": 3,
    "SourceNotReadyError": 4,
    "SlotInUseError": 5,
    "SlotError": 6,
    "LoadError": 7,
    "DecodeError": 8,
    "CopyMissingError": 10,
}


def _subclasses(cls: type) -> set:
    found = {cls}
    for sub in cls.__subclasses__():
        found |= _subclasses(sub)
    return found


def _help_table() -> dict:
    """{number: meaning} as `--help` shows it (a meaning's wrapped lines joined)."""
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    table = result.output.split("Exit codes:\n", 1)[1]
    entries = re.findall(r"^ *(\d+)  (.+?)(?=^ *\d+  |\Z)", table, re.M | re.S)
    return {int(number): " ".join(meaning.split()) for number, meaning in entries}


def test_exit_code_numbers_are_pinned():
    assert {code.name: code.value for code in ExitCode} == NUMBERS


def test_help_lists_every_exit_code_with_its_meaning():
    assert _help_table() == {code.value: code.meaning for code in ExitCode}


def test_help_keeps_the_table_lines_as_written():
    # click's \b: one code a line, not re-wrapped into a paragraph
    output = CliRunner().invoke(cli, ["--help"]).output
    assert "\n    0  success\n    1  unexpected error" in output


def test_every_error_class_exits_with_its_documented_code():
    classes = {cls for cls in _subclasses(ReplicationError)
               if cls.__module__ == exceptions.__name__}
    assert {cls.__name__ for cls in classes} == set(CLASS_CODES)
    for cls in classes:
        assert isinstance(cls.exit_code, ExitCode), cls
        assert cls.exit_code == CLASS_CODES[cls.__name__], cls
        message, code = describe_failure(cls("what went wrong"))
        assert code == CLASS_CODES[cls.__name__], cls
        assert "what went wrong" in message


def test_command_help_texts_name_the_codes_they_exit_with():
    # Option and command help texts are written out (click reads them before pg_replication is
    # imported): they must name the same numbers.
    def help_of(command: str) -> str:
        return " ".join(CliRunner().invoke(cli, [command, "--help"]).output.split())

    assert f"Give up (exit {ExitCode.SOURCE_NOT_READY.value})" in help_of("snapshot")
    status = help_of("status")
    assert f"Exit {ExitCode.CHECK_FAILED.value} when the slot lags" in status
    assert (f"Exits {ExitCode.SLOT.value} when the slot is missing" in status
            and f"{ExitCode.CHECK_FAILED.value} when the lag exceeds" in status)
    assert f"check passes, {ExitCode.CHECK_FAILED.value} otherwise" in help_of("verify")


def test_readme_explains_every_exit_code():
    """The README's table explains the codes at more length than `--help`: the same numbers."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("Exit codes:", 1)[1].split("\n\n", 2)[1]
    numbers = {int(n) for n in re.findall(r"^\| (\d+) \|", table, re.M)}
    assert numbers == {code.value for code in ExitCode}

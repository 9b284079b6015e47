"""`tokentrail --version` reads the installed package's version."""

from __future__ import annotations


def test_the_cli_prints_the_installed_version(capsys) -> None:
    from importlib import metadata

    from tokentrail.api.cli import main

    try:
        main(["--version"])
    except SystemExit as done:
        assert done.code in (0, None)
    assert capsys.readouterr().out.strip() == f"tokentrail {metadata.version('tokentrail')}"

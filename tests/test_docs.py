"""Every command, setting and JSON field a user can meet is documented."""

import dataclasses

from click.testing import CliRunner
from conftest import ROOT

import nomadectl as ctl
from aggregator.views import query
from nomade_common import config, wire

DOCS = {p.name: p.read_text() for p in (ROOT / "docs").glob("*.md")}


def test_every_nomadectl_command_is_documented_and_has_help():
    for name in ctl.main.commands:
        assert f"nomadectl {name}" in DOCS["cli.md"], name
        result = CliRunner().invoke(ctl.main, [name, "--help"])
        assert result.exit_code == 0 and result.output.strip()


def test_every_setting_is_documented_and_in_the_example_config():
    example = (ROOT / "slurm-conf" / "nomade.toml").read_text()
    for section in ("general", "agent", "aggregator", "hooks", "models", "security"):
        cls = type(getattr(config.Config(), section))
        assert f"[{section}]" in DOCS["configuration.md"]
        for field in dataclasses.fields(cls):
            assert f"`{field.name}`" in DOCS["configuration.md"], f"{section}.{field.name}"
            assert field.name in example, (
                f"{section}.{field.name} missing from slurm-conf/nomade.toml"
            )


def test_every_collector_and_its_settings_are_documented_and_in_the_example_config():
    example = (ROOT / "slurm-conf" / "nomade.toml").read_text()
    for f in dataclasses.fields(config.Collectors):
        assert f"[collectors.{f.name}]" in DOCS["configuration.md"], f.name
        assert f"[collectors.{f.name}]" in example, f.name
        for setting in dataclasses.fields(type(getattr(config.Collectors(), f.name))):
            assert f"`{setting.name}`" in DOCS["configuration.md"], (
                f"collectors.{f.name}.{setting.name}"
            )


def test_every_json_field_of_a_job_and_every_sample_field_is_documented():
    for name in (
        *query.JOB_COLUMNS,
        "nodes",
        "series",
        "mem_peak_bytes",
        "queue_at_start",
        "failed",
    ):
        assert f"`{name}`" in DOCS["json.md"], name
    for name in wire.SAMPLE_FIELDS[2:]:
        assert f"`{name}`" in DOCS["json.md"], name

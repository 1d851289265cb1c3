"""The docs an operator reads: man pages and the commented config file made from the code
(outside the Debian package too: quickstart.sh makes them), and a README that names only
what exists."""

import os
import re
import subprocess
import sys
import tomllib

import pytest

from tcpchatd.control.specs import SPECS
from tcpchatd.service import config as config_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [sys.executable, "-m", "tcpchatd.service.docs"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("docs"))
    result = subprocess.run([*DOCS, out], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("page,section", [("tcpchatd", 8), ("tcpchatctl", 1),
                                          ("tcpchat-client", 1)])
def test_each_man_page_renders_with_its_exit_status(made, page, section):
    shown = subprocess.run(["man", "-l", os.path.join(made, f"{page}.{section}")],
                           capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, MANWIDTH="100", MAN_KEEP_FORMATTING="0"))
    assert shown.returncode == 0, shown.stderr
    text = re.sub(r".\x08", "", shown.stdout)
    assert text.startswith(f"{page.upper()}({section})")
    for heading in ("NAME", "SYNOPSIS", "EXIT STATUS", "SEE ALSO"):
        assert f"\n{heading}\n" in text, heading


def test_the_commented_config_file_holds_every_setting_at_its_default(made):
    with open(os.path.join(made, "tcpchatd.toml")) as fh:
        text = fh.read()
    assert tomllib.loads(text) == {}  # every line commented out: the defaults
    uncommented = "\n".join(line[1:] for line in text.splitlines()
                            if re.match(r"#[a-z_]+ = ", line) and '"..."' not in line)
    values = tomllib.loads(uncommented)
    assert set(values) | {name for name, f in config_module.SETTINGS.items()
                          if f.default is None} == set(config_module.SETTINGS)
    assert config_module.build(values, environ={}) == config_module.Config()


def test_without_argparse_manpage_it_says_so_and_writes_nothing(tmp_path):
    blocker = tmp_path / "block" / "build_manpages"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("not installed here")\n')
    out = tmp_path / "out"
    result = subprocess.run([*DOCS, str(out)], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(tmp_path / "block")))
    assert result.returncode == 1
    assert "the man pages need argparse-manpage: pip install 'tcpchatd[docs]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def readme() -> str:
    with open(os.path.join(ROOT, "README.md")) as fh:
        return fh.read()


def test_the_readme_command_table_lists_every_admin_command():
    table = readme().split("| command |", 1)[1].split("\n\n", 1)[0]
    for name in SPECS:
        assert re.search(rf"`tcpchatctl [^`]*\b{name}\b|/ `{name}\b", table), name


def test_the_readme_names_only_modules_and_units_that_exist():
    text = readme()
    for path in set(re.findall(r"tcpchatd/[a-z_/]+\.py", text)):
        assert os.path.exists(os.path.join(ROOT, path)), path
    units = sorted(f for f in os.listdir(os.path.join(ROOT, "contrib", "systemd"))
                   if f.endswith((".service", ".socket")))
    for unit in units:
        assert unit in text, unit
    assert "DESIGN.md" not in text  # the lead's card is not in this repository

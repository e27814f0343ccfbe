"""The nginx example (deploy/nginx/wsha.conf) passes ``nginx -t``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.integration.conftest import REPO

NGINX_CONF = REPO / "deploy" / "nginx" / "wsha.conf"


def main_config(prefix: Path) -> str:
    """A minimal nginx main file that includes the example inside ``http {}``,
    with every path nginx writes kept under ``prefix``."""
    temp = prefix / "temp"
    return f"""
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {NGINX_CONF};
}}
"""


def test_nginx_example_passes_syntax_check(tmp_path: Path) -> None:
    """``nginx -t`` accepts the example included in a main file (no daemon involved:
    the check runs on files under a temporary prefix)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).exists(), "nginx not installed (run scripts/bootstrap)"
    (tmp_path / "temp").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(main_config(tmp_path))

    result = subprocess.run(
        [
            nginx,
            "-t",
            "-p",
            f"{tmp_path}/",
            "-e",
            str(tmp_path / "error.log"),
            "-c",
            str(conf),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr

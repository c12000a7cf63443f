"""The Redis password: from its own setting (a Secret) into the URL, and never in logs or settings reprs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from common.redis_conn import EmbeddedRedis, masked_url
from common.settings import CommonSettings, TrainerSettings

ROOT = Path(__file__).resolve().parents[2]


def test_password_setting_goes_into_the_url_and_stays_out_of_reprs(tmp_path: Path) -> None:
    s = CommonSettings(redis_url="redis://redis:6379/0", redis_password="s3cr/t@x")
    url = s.redis_url_with_password(s.redis_url)
    assert url == "redis://:s3cr%2Ft%40x@redis:6379/0"
    assert redis.Redis.from_url(url).connection_pool.connection_kwargs["password"] == "s3cr/t@x"
    assert "s3cr" not in repr(s) and "s3cr" not in repr(TrainerSettings(common=s)) and "s3cr" not in str(s)
    secret = tmp_path / "redis_password"
    missing = CommonSettings(redis_password_file=secret)  # read when connecting, not when built
    secret.write_text("from-a-file\n")
    assert missing.redis_url_with_password("redis://redis:6379/0") == "redis://:from-a-file@redis:6379/0"
    # A URL that carries its own password keeps it; no URL stays none (the embedded Redis).
    other = CommonSettings(redis_password="other")
    assert other.redis_url_with_password("redis://u:own@redis:6379/0") == "redis://u:own@redis:6379/0"
    assert other.redis_url_with_password("") == ""
    with_url = CommonSettings(redis_url="redis://:inline@redis:6379/0")
    assert "inline" not in repr(with_url)


@pytest.mark.parametrize(("url", "masked"), [
    ("redis://:hunter2@redis:6379/0", "redis://***@redis:6379/0"),
    ("rediss://user:hunter2@10.0.0.1:6380/1?ssl_cert_reqs=required", "rediss://***@10.0.0.1:6380/1?ssl_cert_reqs=required"),
    ("redis://[::1]:6379/0", "redis://[::1]:6379/0"),
    ("redis://:hunter2@[::1]:6379/0", "redis://***@[::1]:6379/0"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
])
def test_masked_url_hides_user_and_password(url: str, masked: str) -> None:
    assert masked_url(url) == masked


def test_trainer_never_logs_the_redis_password(tmp_path: Path) -> None:
    """A real trainer process against a Redis that requires a password (given as ZDM_REDIS_PASSWORD, as the
    Kubernetes Secret does): it connects, and its log shows the URL masked."""
    server = EmbeddedRedis()
    url = server.start()
    redis.Redis.from_url(url).config_set("requirepass", "hunter2")
    port = urlsplit(url).port
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZDM_") and k != "REDIS_URL"}
    env.update({"REDIS_URL": f"redis://127.0.0.1:{port}/0", "ZDM_REDIS_PASSWORD": "hunter2",
                "ZDM_TRAINER_PORT": "0", "ZDM_TRAINER_WORKERS": "0", "ZDM_REGISTRY": str(tmp_path / "registry"),
                "ZDM_KEY_PREFIX": "zdmtest:pw", "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen([sys.executable, "-m", "services.trainer"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "trainer serving" in line:
                break
        proc.kill()  # the start line is all this test reads
        lines.extend(proc.communicate(timeout=30)[0].splitlines())
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
    log = "".join(lines)
    assert "trainer serving" in log and f"redis://***@127.0.0.1:{port}/0" in log, log
    assert "hunter2" not in log

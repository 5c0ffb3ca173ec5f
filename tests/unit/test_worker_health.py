"""``python -m worker.health --liveness``: passes while the upload consumer's loop file is fresh,
fails on a stale or missing one."""

import os
import time

from shared.config import load_settings
from worker import health


def test_liveness_follows_the_age_of_the_file_the_consumer_touches(tmp_path, capsys):
    path = tmp_path / "alive"
    config = load_settings({"WORKER_LIVENESS_FILE": str(path)})
    assert config.worker_liveness_file == path and load_settings({}).worker_liveness_file is None

    assert health.liveness(config, health.LIVENESS_MAX_AGE_SECONDS) == 1
    assert "does not exist" in capsys.readouterr().err
    path.touch()
    assert health.liveness(config, health.LIVENESS_MAX_AGE_SECONDS) == 0
    assert "alive: the upload consumer turned its loop" in capsys.readouterr().out
    stale = time.time() - health.LIVENESS_MAX_AGE_SECONDS - 5
    os.utime(path, (stale, stale))
    assert health.liveness(config, health.LIVENESS_MAX_AGE_SECONDS) == 1
    assert f"over {health.LIVENESS_MAX_AGE_SECONDS} s" in capsys.readouterr().err
    assert health.liveness(config, health.LIVENESS_MAX_AGE_SECONDS + 60) == 0  # --max-age


def test_liveness_fails_when_no_file_is_configured(capsys):
    assert health.liveness(load_settings({}), health.LIVENESS_MAX_AGE_SECONDS) == 1
    assert "WORKER_LIVENESS_FILE is not set" in capsys.readouterr().err

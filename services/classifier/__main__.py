"""``python -m services.classifier``: serve verdicts until SIGTERM / SIGINT.

Settings come from the environment (prefix ``ZDM_CLASSIFIER_``, shared ones ``ZDM_``). A Redis URL is
required (``REDIS_URL`` or ``ZDM_REDIS_URL``); ``zdm up`` starts an embedded Redis and passes its URL.
"""

from __future__ import annotations

import os

# Model conversion forks helper processes; gRPC's fork handlers would only log about it (before grpc loads).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import logging  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

import cv2  # noqa: E402

from common.grpc_server import stop_on_signals  # noqa: E402
from common.images import silence_opencv_logs  # noqa: E402
from common.log import setup_logging  # noqa: E402
from common.redis_conn import connect, require_url  # noqa: E402
from common.settings import ClassifierSettings  # noqa: E402
from common.tracing import setup_tracing  # noqa: E402

log = logging.getLogger("services.classifier")


def main() -> int:
    settings = ClassifierSettings()
    setup_logging("classifier", settings.common.log_level, settings.common.log_format)
    setup_tracing("classifier")
    url = settings.common.redis_url_with_password(require_url(settings.common.redis_url))
    cv2.setNumThreads(settings.opencv_threads)
    silence_opencv_logs()

    from services.classifier.app import ClassifierApp  # after logging: importing torch & co takes a while

    app = ClassifierApp(settings, connect(url))
    app.start()
    stopped = threading.Event()

    def stop() -> None:
        app.stop()
        stopped.set()

    stop_on_signals(stop)
    stopped.wait()
    log.info("classifier stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""gunicorn's settings for FluxWeb, read from the working directory by `gunicorn fluxweb.wsgi:application
--bind HOST:PORT` (contract.md) and by bin/run; a command-line option wins over any of them.

Threaded workers (`gthread`): a request mostly waits on the database or a file, rarely on the CPU, so a few
processes with several threads each serve a small team; the listen backlog queues bursts instead of
resetting connections (runserver's backlog is 10)."""

import os

wsgi_app = "fluxweb.wsgi:application"
worker_class = "gthread"
workers = int(os.environ.get("FLUXWEB_WEB_WORKERS", "2"))
threads = int(os.environ.get("FLUXWEB_WEB_THREADS", "8"))
backlog = 2048
timeout = 60  # a request thread silent this long is stuck: its worker is restarted
graceful_timeout = int(os.environ.get("FLUXWEB_STOP_GRACE", "10"))
accesslog = "-"
control_socket_disable = True  # one shared socket in $HOME would collide between installs; not used

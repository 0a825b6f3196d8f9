"""``python -m grain.runner FD [WORKER_PID]``: run jobs sent over the socket ``FD`` by a worker."""

from .main import main

main()

"""On the PYTHONPATH of `dvc queue start`, this makes each queue worker's monitor thread die the way
treeverse/dvc#10428 kills it: a JSONDecodeError while reading a broker reply that another thread
or process is still writing. The worker then idles after the queue is empty, as after the race,
but every time instead of now and then."""
import json
import threading

from kombu.transport import filesystem

_get = filesystem.Channel._get


def _get_mid_write(self, queue):
    if threading.current_thread().name.endswith("(monitor)"):
        raise json.JSONDecodeError("Expecting value", "", 0)
    return _get(self, queue)


filesystem.Channel._get = _get_mid_write

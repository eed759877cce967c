"""`serve`: the web app's entry point, what `vidcycle serve` calls.

Checks the address (127.0.0.1 unless a password is given), makes the work and runs folders, queues
again the tasks a stopped server left unfinished, then builds the page and serves it until Ctrl-C,
starting each queue's next task (vidcycle.web.tasks) as the one before it ends.
"""

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from vidcycle.errors import DeviceError, UsageError
from vidcycle.web import tasks
from vidcycle.web.places import Places

log = logging.getLogger("vidcycle")
LOCAL = {"127.0.0.1", "localhost", "::1"}
USER = "vidcycle"


@dataclass(frozen=True)
class ServeOptions:
    roots: list = field(default_factory=list)   # folders the page may read (and train from)
    work: Path | None = None                     # default $VIDCYCLE_HOME/serve
    runs: Path | None = None                     # default WORK/runs
    host: str = "127.0.0.1"
    port: int = 7860
    password: str | None = None                  # required for any address but this machine's
    max_upload: int = 2 << 30                    # bytes
    device: str = "auto"


def check_address(options: ServeOptions) -> None:
    """Raises UsageError for an address other than this machine's without a password."""
    if options.host not in LOCAL and not options.password:
        raise UsageError(f"--host {options.host} would open the app to other machines: give a password too "
                         f"(--password or VIDCYCLE_SERVE_PASSWORD); user name '{USER}'")


def serve(options: ServeOptions, on_ready=None) -> None:
    """Serve the app until interrupted; `on_ready(url)` is called once it answers. Raises UsageError."""
    check_address(options)
    from vidcycle.models.store import store_home  # lazy: the address check above stays instant
    places = Places.make(options.roots, options.work or store_home() / "serve", options.runs)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves this machine
    os.environ["GRADIO_TEMP_DIR"] = str(places.work / "gradio")  # uploads land in the work folder
    try:
        from vidcycle.web import app  # lazy: gradio (seconds to import) loads only when serving
    except ModuleNotFoundError as error:
        if error.name not in ("gradio", "fastapi", "uvicorn"):
            raise
        raise DeviceError(f"the web app needs {error.name}: pip install 'vidcycle[web]'") from error
    page = app.Page(places, options.max_upload, options.device)
    blocks = app.build(page)
    again = tasks.resume_interrupted(places.work)
    if again:
        log.info("continuing %d interrupted task(s): %s", len(again), ", ".join(again))
    stop_queues = _keep_queues_moving(places.work)
    blocks.queue(default_concurrency_limit=2)
    _, url, _ = blocks.launch(server_name=options.host, server_port=options.port, prevent_thread_lock=True,
                              quiet=True, share=False, show_error=True, theme=app.theme(), css=app.CSS,
                              allowed_paths=[str(places.work), str(places.runs)],
                              max_file_size=options.max_upload, footer_links=[],
                              auth=(USER, options.password) if options.password else None)
    if on_ready:
        on_ready(url.rstrip("/") if url else f"http://{options.host}:{options.port}")
    try:
        blocks.block_thread()
    finally:
        stop_queues.set()
        blocks.close()


def _keep_queues_moving(work: Path, every: float = 1.0) -> threading.Event:
    """A thread that starts each queue's next task once the one before it has ended; set the event to stop."""
    stop = threading.Event()

    def tick():
        while not stop.wait(every):
            try:
                for task_id in tasks.start_waiting(work):
                    log.info("started queued task %s", task_id)
            except OSError as error:  # a full disk must not end the queues for good
                log.warning("task queue: %s", error)

    threading.Thread(target=tick, name="vidcycle-queues", daemon=True).start()
    return stop

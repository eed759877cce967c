"""`vidcycle serve`: a local web app over the library (Gradio on FastAPI).

    server.py   serve(): the address check, the folders, restarting unfinished tasks, the launch
    places.py   the folders the app may read and write (its roots, the store, its work folder, the runs
                folder) and the one check every path and name from the page goes through
    tasks.py    jobs, runs, distillations and ONNX exports as folders on disk, each run by a child process
    worker.py   that child: calls the same library function as the matching CLI command
    views.py    what each tab shows, as plain data (tables, texts, progress), built from the library
    app.py      the Gradio page and its launch; the only module that imports gradio

Every action calls the public functions the CLI calls; the page adds nothing that only it can do.
"""

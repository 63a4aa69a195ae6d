"""The app's non-UI logic: settings and share links, time estimates, sessions, ZeroGPU leases, runs.

`app.py` is the Gradio UI and stays thin; everything here is plain Python that knows no Gradio,
so it is tested without a browser or a server. Nothing under `fifo/` knows this package.
"""

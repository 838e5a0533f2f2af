"""The demo client: stream a webcam, a video file or an image folder to a running server.

``segserve demo`` shows the overlay live with a HUD, or (``--headless``, or no display) writes a
side-by-side MP4, a per-frame CSV and a latency plot. ``make demo`` (``run_demo``) starts a server
on the shipped model, streams the shipped clip headless and stops the server.
"""

"""``segserve demo --web PORT``: the live overlay, HUD figures and a latency chart in a browser.

For vehicles and servers without a screen. The page and its script are in ``static/`` (no CDN: the
browser downloads nothing from elsewhere); frames and figures reach it over one WebSocket
(``server.WebView``, aiohttp). This module stays light: the CLI reads ``MAX_VIEWERS`` for its help.
"""

MAX_VIEWERS = 8  # WebSocket viewers at once; the next one gets HTTP 503

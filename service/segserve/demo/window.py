"""The live window, through pygame (SDL): opencv-python-headless has no GUI.

pygame comes with the ``demo`` extra (``pip install 'segserve[demo]'``; ``dev`` includes it).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pygame

from segserve.demo.errors import DemoError


def display_available() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class LiveWindow:
    """``show(bgr)`` draws a frame; it returns False once the user closed the window or pressed q/Esc."""

    def __init__(self, title: str = "segserve demo", max_width: int = 1600):
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        try:
            import pygame
        except ImportError:
            raise DemoError(
                "the live window needs pygame: pip install 'segserve[demo]' (or use --headless)"
            ) from None
        if not display_available():
            raise DemoError("no display (DISPLAY is not set): use --headless to write a video instead")
        self.pg = pygame
        try:
            pygame.display.init()
        except pygame.error as exc:
            raise DemoError(f"cannot open a window: {exc} (use --headless)") from None
        pygame.display.set_caption(title)
        self.max_width = max_width
        self.screen: pygame.Surface | None = None

    def show(self, bgr: np.ndarray) -> bool:
        pg = self.pg
        h, w = bgr.shape[:2]
        if w > self.max_width:
            import cv2

            bgr = cv2.resize(bgr, (self.max_width, h * self.max_width // w), interpolation=cv2.INTER_AREA)
            h, w = bgr.shape[:2]
        if self.screen is None or self.screen.get_size() != (w, h):
            self.screen = pg.display.set_mode((w, h))
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        surface = pg.image.frombuffer(rgb.tobytes(), (w, h), "RGB")
        self.screen.blit(surface, (0, 0))
        pg.display.flip()
        for event in pg.event.get():
            if event.type == pg.QUIT or (event.type == pg.KEYDOWN and event.key in (pg.K_q, pg.K_ESCAPE)):
                return False
        return True

    def close(self) -> None:
        self.pg.display.quit()

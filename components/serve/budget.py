"""The decoded-pixel budget: heavy requests wait their turn (or get 429) while light ones and /health go on.

A PNG of 6000x6600 pixels can be 115 KB on the wire and cost a second of CPU and 120 MB of memory to decode:
the body size says nothing about the work. Every image's size is read from its header before any pixel is
decoded, and a request is then
- refused (413) when its images hold more than `request_pixels` pixels in all;
- decoded in the shared decode threads when it holds at most `heavy_pixels` (a light request), as soon as the
  light requests decoding at that moment hold at most `light_pixels` together (its thread waits till then:
  64 decode threads each on a 4 MP image held ~5 GB at once, where an animated GIF had passed for one);
- otherwise queued, first come first served, until the heavy requests decoding at that moment hold at most
  `decode_pixels` pixels together, and decoded in a few threads of its own, so heavy decodes never take
  every core or every decode thread; when `max_waiting` heavy requests already wait, it is refused (429).
The waiting happens in the event loop, not in a thread, so a thousand waiting requests hold no thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from dataclasses import dataclass
from http import HTTPStatus

from components.serve.model import RequestError


@dataclass(frozen=True)
class DecodeLimits:
    request_pixels: int = 100_000_000  # per request: e.g. 8 photos of 12 MP; 16 MiB of JSON holds ~4
    heavy_pixels: int = 4_000_000  # a request with more decoded pixels than this is heavy and queues
    light_pixels: int = 4_000_000  # light requests decoding at once hold at most this many pixels (~150 MB)
    decode_pixels: int = 100_000_000  # heavy requests decoding at once hold at most this many pixels
    heavy_threads: int = 2  # threads decoding heavy requests: at most this many cores busy with them
    max_waiting: int = 16  # heavy requests queued beyond this get 429 (Retry-After) instead of waiting

    def __post_init__(self):
        if self.decode_pixels < self.request_pixels:
            raise ValueError("decode_pixels must hold at least one request of request_pixels")
        if self.light_pixels < self.heavy_pixels:
            raise ValueError("light_pixels must hold at least one light request of heavy_pixels")


class PixelBudget:
    """A first-come first-served weighted semaphore counted in pixels, for one event loop."""

    def __init__(self, limits: DecodeLimits):
        self.limits = limits
        self.in_use = 0  # pixels of the heavy requests decoding now
        self.decoding = 0  # heavy requests decoding now
        self.refused = 0  # heavy requests answered 429
        self._waiting: collections.deque[tuple[int, asyncio.Future]] = collections.deque()
        self.light_in_use = 0  # pixels of the light requests decoding now
        self._light = threading.Condition()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def check(self, pixels: int) -> bool:
        """Whether a request of `pixels` decoded pixels is heavy; RequestError 413 when it is over the limit."""
        if pixels > self.limits.request_pixels:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"the images of this request hold {pixels} pixels, over the "
                               f"{self.limits.request_pixels}-pixel limit per request: send fewer or smaller images")
        return pixels > self.limits.heavy_pixels

    @contextlib.contextmanager
    def light(self, pixels: int):
        """Holds `pixels` (at most heavy_pixels) of the light budget while a decode thread decodes them."""
        with self._light:
            self._light.wait_for(lambda: self.light_in_use + pixels <= self.limits.light_pixels)
            self.light_in_use += pixels
        try:
            yield
        finally:
            with self._light:
                self.light_in_use -= pixels
                self._light.notify_all()

    async def acquire(self, pixels: int) -> None:
        if not self._waiting and self.in_use + pixels <= self.limits.decode_pixels:
            self._take(pixels)
            return
        if len(self._waiting) >= self.limits.max_waiting:
            self.refused += 1
            raise RequestError(HTTPStatus.TOO_MANY_REQUESTS,
                               f"{len(self._waiting)} requests with large images are already waiting to be "
                               "decoded: retry later, or send smaller images")
        entry = (pixels, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        try:
            await entry[1]
        except asyncio.CancelledError:
            if entry[1].done() and not entry[1].cancelled():
                self.release(pixels)  # granted, then cancelled before it could be used
            else:
                self._waiting.remove(entry)
                self._wake()
            raise

    def release(self, pixels: int) -> None:
        self.in_use -= pixels
        self.decoding -= 1
        self._wake()

    def _take(self, pixels: int) -> None:
        self.in_use += pixels
        self.decoding += 1

    def _wake(self) -> None:
        while self._waiting and self.in_use + self._waiting[0][0] <= self.limits.decode_pixels:
            pixels, future = self._waiting.popleft()
            self._take(pixels)
            future.set_result(None)

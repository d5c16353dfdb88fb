"""The server's Prometheus metrics (`GET /metrics`, text format 0.0.4), one registry per app so
several apps in one process (tests, embedding programs) keep their own counts.

    minillm_requests_total{endpoint, status}   HTTP requests answered (streams: when they end)
    minillm_prompt_tokens_total                prompt tokens of generation requests
    minillm_completion_tokens_total            tokens generated
    minillm_time_to_first_token_seconds        request received -> first token generated
    minillm_queue_requests{state}              generations running / waiting, at scrape time
    minillm_cancelled_requests_total           generations stopped because the client went away
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# The endpoint label takes these paths; anything else counts as "other" (no label per typo).
ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/health",
    "/metrics",
)
# From a fast CPU answer to a long queue.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def endpoint_of(path: str) -> str:
    if path in ENDPOINTS:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    return "other"


class Metrics:
    """The counters of one app; `queue` is asked for {"running", "waiting"} at each scrape."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue: Callable[[], dict[str, int]]):
        self.registry = r = CollectorRegistry()
        self._queue = queue
        self.requests = Counter(
            "minillm_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter(
            "minillm_prompt_tokens", "prompt tokens of generation requests", registry=r
        )
        self.completion_tokens = Counter(
            "minillm_completion_tokens", "completion tokens generated", registry=r
        )
        self.ttft = Histogram(
            "minillm_time_to_first_token_seconds",
            "seconds from receiving a generation request to its first generated token",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.queue = Gauge(
            "minillm_queue_requests", "generations running or waiting", ["state"], registry=r
        )
        self.cancelled = Counter(
            "minillm_cancelled_requests",
            "generations stopped because the client went away",
            registry=r,
        )

    def render(self) -> bytes:
        for state, value in self._queue().items():
            self.queue.labels(state).set(value)
        return generate_latest(self.registry)

    def middleware(self, app: Any) -> Any:
        """ASGI middleware counting every HTTP request by endpoint and status. Pure ASGI (not
        Starlette's BaseHTTPMiddleware), so streams and disconnect detection pass untouched."""
        requests = self.requests

        async def counted(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            status = 500  # an exception before the response started

            async def send_status(message: Any) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_status)
            finally:
                requests.labels(endpoint_of(scope["path"]), str(status)).inc()

        return counted

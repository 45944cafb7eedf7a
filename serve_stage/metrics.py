"""The server's Prometheus metrics, in a registry of its own (`GET /metrics` renders it)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "ttt_serve"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(f"{PREFIX}_requests", "HTTP requests answered",
                                ["endpoint", "status"], registry=r)  # fmt: skip
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "prompt tokens prefilled",
                                     registry=r)  # fmt: skip
        self.generated_tokens = Counter(f"{PREFIX}_generated_tokens", "tokens generated",
                                        registry=r)  # fmt: skip
        self.batch_size = Gauge(f"{PREFIX}_batch_size", "rows in the decode batch",
                                registry=r)  # fmt: skip
        self.queue_depth = Gauge(f"{PREFIX}_queue_depth", "requests waiting to join the batch",
                                 registry=r)  # fmt: skip
        self.decode_tokens_per_second = Gauge(
            f"{PREFIX}_decode_tokens_per_second",
            "tokens decoded per second in the last decode step (rows / step time)",
            registry=r,
        )
        self.step_seconds = Histogram(f"{PREFIX}_decode_step_seconds", "time of one decode step",
                                      registry=r)  # fmt: skip
        self.time_to_first_token = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "from a request's arrival to its first generated token",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.sessions = Gauge(f"{PREFIX}_sessions", "sessions stored", ["where"], registry=r)
        self.session_state_bytes = Gauge(
            f"{PREFIX}_session_state_bytes", "bytes of the session states held in memory",
            registry=r,
        )  # fmt: skip

    def step(self, batch: int, seconds: float) -> None:
        self.step_seconds.observe(seconds)
        if seconds > 0:
            self.decode_tokens_per_second.set(batch / seconds)

    def render(self, sessions: dict[str, int]) -> bytes:
        """The exposition text, with the session gauges read from the store now."""
        self.sessions.labels(where="disk").set(sessions["sessions"])
        self.sessions.labels(where="memory").set(sessions["in_memory"])
        self.session_state_bytes.set(sessions["in_memory_bytes"])
        return generate_latest(self.registry)

"""Everything that talks to Ollama (the target): the contract, its errors, the client."""

from foreman.target.client import TargetClient
from foreman.target.contract import BodyProducer, Sink, Target, TargetResponse, Upstream
from foreman.target.errors import (
    Cancelled,
    TargetError,
    TargetStatusError,
    TargetTimeout,
    TargetUnreachable,
    TargetUnusable,
)

__all__ = [
    "BodyProducer",
    "Cancelled",
    "Sink",
    "Target",
    "TargetClient",
    "TargetError",
    "TargetResponse",
    "TargetStatusError",
    "TargetTimeout",
    "TargetUnreachable",
    "TargetUnusable",
    "Upstream",
]

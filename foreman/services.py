"""The services one foreman's handlers share."""

from __future__ import annotations

from dataclasses import dataclass, field

from foreman.activity import Activity
from foreman.auth import FailedAuthLog, TokenSet
from foreman.budget import MemoryBudget
from foreman.config import Config
from foreman.inventory import Inventory
from foreman.metrics import Metrics
from foreman.queue import FairQueue
from foreman.ledger import Ledger
from foreman.target import Target
from foreman.targets import Targets
from foreman.wake import Waker


@dataclass
class Services:
    """Handed to every handler as one route argument, never reached as globals."""

    config: Config
    target: Target
    inventory: Inventory
    activity: Activity
    queue: FairQueue
    tokens: TokenSet
    admins: TokenSet
    metrics: Metrics
    auth_failures: FailedAuthLog
    #: FOREMAN_MAX_BODY_MEMORY: what request bodies and held answers may take at once
    memory: MemoryBudget
    #: sends magic packets while requests wait for the target; None without FOREMAN_WAKE_MAC
    waker: Waker | None = None
    #: every target (one, or several); `target`, `inventory` and `waker` are the first one's
    targets: Targets | None = None
    #: what finished requests leave for the status page
    ledger: Ledger = field(default_factory=Ledger)

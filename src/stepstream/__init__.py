"""stepstream: durable background workflows whose progress streams live to the browser.

>>> from stepstream import Realtime, handle
>>> realtime = Realtime(schema={"chat": {"message": str}})
>>> app = handle(realtime)  # an ASGI SSE endpoint
"""

from stepstream.client import Client
from stepstream.errors import (
    BackendError,
    BackendUnavailable,
    ChildRunFailed,
    ConfigurationError,
    CursorUnavailable,
    NonDeterminismError,
    NonRetryableError,
    NoWaiters,
    RetryAfterError,
    RunConflict,
    RunFailed,
    RunNotFound,
    StepFailed,
    StepstreamError,
    UnknownWorkflow,
    ValidationError,
    WorkflowFailed,
)
from stepstream.realtime import Channel, Realtime, handle
from stepstream.records import HistoryPolicy, Message, RunState, StepState
from stepstream.version import __version__
from stepstream.workflow.context import WorkflowContext
from stepstream.workflow.cron import Schedule
from stepstream.workflow.flow import FlowControl
from stepstream.workflow.policy import Backoff
from stepstream.workflow.worker import Worker
from stepstream.workflows import Workflows

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "Backoff",
    "Channel",
    "ChildRunFailed",
    "Client",
    "ConfigurationError",
    "CursorUnavailable",
    "FlowControl",
    "HistoryPolicy",
    "Message",
    "NoWaiters",
    "NonDeterminismError",
    "NonRetryableError",
    "Realtime",
    "RetryAfterError",
    "RunConflict",
    "RunFailed",
    "RunNotFound",
    "RunState",
    "Schedule",
    "StepFailed",
    "StepState",
    "StepstreamError",
    "UnknownWorkflow",
    "ValidationError",
    "Worker",
    "WorkflowContext",
    "WorkflowFailed",
    "Workflows",
    "__version__",
    "handle",
]

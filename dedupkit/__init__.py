"""dedupkit: at most one pending RQ job per dedup key, decided atomically in Redis.

    dedup = Deduplicator(Queue("email_processing", connection=redis))
    adm = dedup.enqueue(user_id, process_user_emails, user_id)
    if not adm.admitted:
        print("already pending:", adm.status.to_dict())
"""

from .deduplicator import Deduplicator
from .errors import (
    DedupkitError,
    EvictionPolicyError,
    InvalidKeyError,
    InvalidRequestError,
    JobIdCollisionError,
    NaiveDatetimeError,
    RedisRefusedError,
    RedisUnavailableError,
    ScriptError,
)
from .keys import Key, decode_key, encode_key, generate_job_id, parse_job_id
from .models import Admission, EnqueueRequest, JobState, LastRun, OnConflict, RequeueResult, SlotStatus
from .scheduler import ScheduleEntry, Scheduler, TickResult, shard_of

__all__ = [
    "Admission",
    "DedupkitError",
    "Deduplicator",
    "EnqueueRequest",
    "EvictionPolicyError",
    "InvalidKeyError",
    "InvalidRequestError",
    "JobIdCollisionError",
    "JobState",
    "Key",
    "LastRun",
    "NaiveDatetimeError",
    "OnConflict",
    "RedisRefusedError",
    "RedisUnavailableError",
    "RequeueResult",
    "ScheduleEntry",
    "Scheduler",
    "ScriptError",
    "SlotStatus",
    "TickResult",
    "decode_key",
    "encode_key",
    "generate_job_id",
    "parse_job_id",
    "shard_of",
]
__version__ = "0.1.0"

"""Names the operator shares with the cluster: the resource, labels, annotations, reasons.

Kept in one module so that builders, handlers, tests and the RBAC docs agree on every key.
Names the workers must spell the same way (the API group, folders under the output URI, the
permanent-error exit code) come from `palimpsest.names`.
"""

from __future__ import annotations

from typing import Final

from palimpsest import names

GROUP: Final = names.API_GROUP
API_VERSION: Final = names.API_VERSION
VERSION: Final = API_VERSION.split("/", 1)[1]
PLURAL: Final = "rewritejobs"
KIND: Final = names.KIND

# Labels on the Jobs (and through their templates, the pods) the operator creates.
LABEL_JOB: Final = f"{GROUP}/rewritejob"  # the owning RewriteJob's name
LABEL_STAGE: Final = f"{GROUP}/stage"  # the stage kind: filter, or the last rewrite stage
LABEL_STAGE_ID: Final = f"{GROUP}/stage-id"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "palimpsest-operator"
LABEL_KUEUE_QUEUE: Final = "kueue.x-k8s.io/queue-name"

# Annotations a user sets on a RewriteJob; a new value triggers the action once.
ANNOTATION_RERUN: Final = f"{GROUP}/rerun"  # delete the stages' markers and run everything again
ANNOTATION_RETRY_FAILED: Final = f"{GROUP}/retry-failed"  # re-run only uncommitted shards

# Annotations the operator sets on the Jobs it creates.
ANNOTATION_STAGE_IDS: Final = f"{GROUP}/stage-ids"  # the ids of the stages the Job runs
ANNOTATION_SHARDS_PER_INDEX: Final = f"{GROUP}/shards-per-index"  # plan shards per Job index
ANNOTATION_SHARD_LIST: Final = f"{GROUP}/shard-list"  # the shards a retry Job's indexes run

# Phases (status.phase).
PENDING: Final = "Pending"
FILTERING: Final = "Filtering"
REWRITING: Final = "Rewriting"
SUCCEEDED: Final = "Succeeded"
FAILED: Final = "Failed"
SUSPENDED: Final = "Suspended"
WAITING_FOR_ADMISSION: Final = "WaitingForAdmission"  # a queued Job Kueue has not admitted yet
PHASES: Final = (PENDING, FILTERING, REWRITING, WAITING_FOR_ADMISSION, SUCCEEDED, FAILED, SUSPENDED)

# Condition types (status.conditions).
COND_READY: Final = "Ready"  # True once every stage committed every shard
COND_PROGRESSING: Final = "Progressing"
COND_FAILED: Final = "Failed"
COND_SUSPENDED: Final = "Suspended"
COND_WAITING_FOR_ADMISSION: Final = "WaitingForAdmission"
COND_DEGRADED: Final = "Degraded"  # the last tick failed on S3 or the API; retried with backoff
COND_MARKERS_QUARANTINED: Final = "MarkersQuarantined"  # unreadable markers moved aside

# Condition and Event reasons.
REASON_INVALID_SPEC: Final = "InvalidSpec"
REASON_DENIED: Final = "Denied"  # the spec names an image or Secret the operator's settings refuse
REASON_PLANNED: Final = "Planned"
REASON_PLAN_FAILED: Final = "PlanFailed"
REASON_STORAGE_ERROR: Final = "StorageError"
REASON_JOB_CREATED: Final = "JobCreated"
REASON_STAGE_RUNNING: Final = "StageRunning"
REASON_STAGE_SUCCEEDED: Final = "StageSucceeded"
REASON_STAGE_REUSED: Final = "StageReused"
REASON_SHARDS_FAILED: Final = "ShardsFailed"
REASON_SUCCEEDED: Final = "Succeeded"
REASON_DRY_RUN: Final = "DryRun"
REASON_SUSPENDED: Final = "Suspended"
REASON_WAITING_FOR_ADMISSION: Final = "WaitingForAdmission"
REASON_RESUMED: Final = "Resumed"
REASON_STALE_JOB_DELETED: Final = "StaleJobDeleted"
REASON_RETRYING: Final = "RetryingFailedShards"
REASON_RERUN: Final = "Rerun"
REASON_WRITING_MANIFEST: Final = "WritingManifest"
REASON_WRITING_CARD: Final = "WritingCard"
REASON_TEMPORARY_ERROR: Final = "TemporaryError"
REASON_MARKER_QUARANTINED: Final = "MarkerQuarantined"
REASON_INDEX_GIVEN_UP: Final = "IndexGivenUp"  # evicted by the kubelet past its retries

# Stage states (status.stages[].state).
STAGE_WAITING: Final = "Waiting"
STAGE_RUNNING: Final = "Running"
STAGE_SUCCEEDED: Final = "Succeeded"
STAGE_FAILED: Final = "Failed"
STAGE_REUSED: Final = "Reused"  # complete on S3 before this RewriteJob ran it
STAGE_DONE: Final = (STAGE_SUCCEEDED, STAGE_REUSED)

# Where worker pods find mounted things.
PROMPTS_MOUNT: Final = "/etc/palimpsest/prompts"
MODELS_MOUNT: Final = "/models"
SHM_MOUNT: Final = "/dev/shm"

# The exit code a worker uses for a permanent configuration error: its index fails at once.
EXIT_PERMANENT: Final = names.EXIT_CONFIG_ERROR

# Secret keys of the storage Secret, passed to workers as env of the same names.
S3_SECRET_KEYS: Final = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_SECRET_KEYS: Final = ("AWS_SESSION_TOKEN",)

# Where the operator keeps plans and manifests under the job's output URI.
PLANS_DIR: Final = names.PLANS_DIR
MANIFESTS_DIR: Final = names.MANIFESTS_DIR
RETRIES_DIR: Final = "_retries"  # the shard lists of retry Jobs (`<job name>.json`)

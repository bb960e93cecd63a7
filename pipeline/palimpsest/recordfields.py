"""The record fields the pipeline itself writes (beside the input's own fields).

Every stage adds its results under these names: why a record was rejected, by which stage, the
filter's score, each rewrite stage's metadata. They are declared once here so that the stages,
the report and the tests read and write the same names.
"""

from __future__ import annotations

from typing import Final

REASON_FIELD: Final = "reject_reason"
"""On a reject: the reason code (e.g. `syntax_error`, `truncated`)."""
DETAIL_FIELD: Final = "reject_detail"
"""On a reject, when there is more to say: a short human-readable detail."""
STAGE_FIELD: Final = "reject_stage"
"""On a reject of a rewrite stage: the kind of the stage that rejected it."""
SCORE_FIELD: Final = "pylint_score"
"""The filter's penalised pylint score (0-10), when one was computed to the end."""
SCORE_MAX_FIELD: Final = "pylint_score_max"
"""On a low-score reject whose linting stopped early: the best score it could still reach."""
CONTAMINATION_FIELD: Final = "contamination"
"""On a `contaminated` reject: the benchmark, the task id and how it matched (exact or near,
with the Jaccard similarity)."""
DUPLICATE_OF_FIELD: Final = "duplicate_of"
"""On a `duplicate` reject: the id of the record kept for its cluster (its key when it has no
id)."""
META_FIELD: Final = "rewrite"
"""One sub-object per rewrite stage that touched the record (tokens, prompt hash, score)."""
RESPONSES_FIELD: Final = "responses"
"""Instruct recipe: the list of generated responses, beside the instruction in the text field."""
KEY_FIELD: Final = "_palimpsest_key"
"""The record's key: assigned once, when the first stage reads the raw shard, and carried
unchanged through every stage, so checkpoints and resumes of any stage name a record the same
way (see `palimpsest.recordkeys`)."""

# Parse-time set-up of the slide-level bulk tasks (config `bulk`): the plan's bulk jobs, checked
# once (feature sets known, tables on disk or written by the demo); the bulk_fit rule looks its
# inputs and params up in BULK. Cheap: no torch, no file is read.
from histofuse.plan.bulk import sources_flag

BULK = PLAN.bulk

"""NØMADE's cluster workload generator: jobs with learnable but noisy habits, submitted to a real
Slurm cluster (`python -m workload run|export`) or simulated (`synthesize`).  It feeds the
recorded dataset (data/workload-v1), the tests and the benches; docs/workload.md."""

from .generator import *  # noqa: F403
from .generator import (  # noqa: F401
    DEFAULT_SEED,
    JobType,
    User,
    draw_job,
    ended_outcomes,
    export,
    job_command,
    main,
    run,
    sbatch_argv,
    synthesize,
)

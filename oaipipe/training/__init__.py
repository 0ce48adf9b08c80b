"""Fine-tuning datasets and jobs: read training material, build and validate a dataset, launch a job.

* :mod:`~oaipipe.training.sources` reads dialogue logs, run records, CSV, JSONL and folders;
* :mod:`~oaipipe.training.build` selects, pairs (DPO), de-duplicates and splits;
* :mod:`~oaipipe.training.validate` writes the report (OpenAI cookbook categories, tokens, epochs, price);
* :mod:`~oaipipe.training.estimate` holds the epoch rule, token limits and the price estimate;
* :mod:`~oaipipe.training.launch` launches and follows jobs and writes the registry (:mod:`oaipipe.jobs`);
* :mod:`~oaipipe.training.export` writes a run's dataset for other trainers (``oaipipe dataset export``);
* :func:`train_after_run` is the ``train:`` block of a pipeline.
"""

from __future__ import annotations

from .build import BuildResult, DatasetFiles, build_rows, write_dataset
from .estimate import default_epochs, estimate_training, token_limit_for
from .launch import (
    JobStillRunning,
    LaunchResult,
    build_dataset,
    default_dataset_path,
    ensure_valid,
    follow_job,
    launch_job,
    raise_if_failed,
    report_for,
    trainer_for_job,
)
from .pipeline import build_train_block, train_after_run
from .sources import Example, parse_select, read_examples
from .validate import CATEGORIES, MIN_EXAMPLES, ValidationReport, validate_file, validate_rows

__all__ = [
    "CATEGORIES",
    "MIN_EXAMPLES",
    "BuildResult",
    "DatasetFiles",
    "Example",
    "JobStillRunning",
    "LaunchResult",
    "ValidationReport",
    "build_dataset",
    "build_rows",
    "build_train_block",
    "default_dataset_path",
    "default_epochs",
    "ensure_valid",
    "estimate_training",
    "follow_job",
    "launch_job",
    "parse_select",
    "raise_if_failed",
    "read_examples",
    "report_for",
    "token_limit_for",
    "train_after_run",
    "trainer_for_job",
    "validate_file",
    "validate_rows",
    "write_dataset",
]

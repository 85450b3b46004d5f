"""``vedit.batch`` as a package: the names the one batch module gave, from the modules that define them now."""

from __future__ import annotations


def test_the_batch_package_gives_the_names_the_batch_module_gave():
    """``vedit.batch`` was one module and scripts import its public names from it (``from vedit.batch import
    run_batch``): the package holds them, the very objects of the modules that define them now."""
    import vedit.batch
    from vedit.batch import plan, run

    former = [
        "Job", "JobFile", "JobFileError", "Plan", "PlannedEdit", "InversionGroup", "Unit", "Outcome", "BatchEvents",
        "BatchResult", "read_job_file", "plan_batch", "run_batch", "choose_backend", "execute", "sidecar_path",
        "read_sidecar", "up_to_date", "settings_of", "digest_of", "prompt_slug", "default_summary_path",
        "FAILED_EXIT_CODE", "OutputsRefused",
    ]  # fmt: skip
    assert [name for name in former if not hasattr(vedit.batch, name)] == []
    assert vedit.batch.plan_batch is plan.plan_batch and vedit.batch.OutputsRefused is plan.OutputsRefused
    assert vedit.batch.run_batch is run.run_batch and vedit.batch.FAILED_EXIT_CODE == 8

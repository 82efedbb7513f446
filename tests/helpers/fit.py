"""The toy learning tests' validate-fit-validate loop."""

import lightning as L


def validate_fit_validate(module: L.LightningModule, datamodule: L.LightningDataModule, steps: int) -> tuple:
    """(validation metrics before, after) ``steps`` CPU training steps without loggers, checkpoints or validation in
    between: the toy learning tests' "trained beats untrained" measurement."""

    def validate() -> dict:
        judge = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
        return judge.validate(module, datamodule, verbose=False)[0]

    trainer = L.Trainer(accelerator="cpu", max_steps=steps, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)  # fmt: skip
    before = validate()
    trainer.fit(module, datamodule)
    # "trained beats untrained" means nothing if the loop stopped early (an empty loader, a skipped step)
    assert trainer.global_step == steps, f"the fit took {trainer.global_step} optimizer steps, not {steps}"
    return before, validate()

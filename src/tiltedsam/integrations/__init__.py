"""Adapters that train the perturbation optimizers inside PyTorch Lightning and the Hugging Face ``Trainer``.

Each framework lives in its own module and is imported only when asked for, so ``import tiltedsam``
never pulls in Lightning or transformers:

* :mod:`tiltedsam.integrations.lightning` -- :class:`~tiltedsam.integrations.lightning.PerturbationOptimizerMixin`
  (extra ``tiltedsam[lightning]``);
* :mod:`tiltedsam.integrations.hf` -- :class:`~tiltedsam.integrations.hf.PerturbationTrainer`
  (extra ``tiltedsam[hf]``).

What both share (running one step's evaluations over the micro-batches of an accumulation group, and
the framework-facing ``step``) is in :mod:`tiltedsam.integrations.common`. See ``docs/integrations.md``.
"""

__all__: list[str] = []

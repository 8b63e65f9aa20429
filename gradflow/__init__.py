"""gradflow: why a deep plain CNN fails to train, measured layer by layer, and what fixes it.

The library behind the DVC stages in `stages/`. Read in this order:

  params     params.yaml parsed once into typed dataclasses; the resolved config of one run
  errors     the two mistakes a user can make: bad params (ParamsError), bad files (DataError)
  cli        the stages' entry-point wrapper: one line and an exit code, never a traceback;
             which params.yaml keys differ from the last commit
  paths      every file the pipeline reads or writes, in one place
  files      atomic writes and checked reads
  memory     the check stage's estimate of a run's memory
  workspace  the check stage's refusal of a user's files where outputs would go
  verdict    learns / stuck at chance / diverged, from binomial statistics
  data       sources (CIFAR-100, synthetic), the dataset file, batched augmentation
  fixes      the registry of fixes: one class each, the piece it builds and what it is
  model      the coursework's VGG family, built with the fixes a variant switches on
  loss       the training loss (deep supervision's auxiliary heads included)
  device     the device and precision a run uses; one-thread sections for byte-stable results
  fastpath   the training step: eager, torch.compile or a CUDA graph
  capture    per-layer gradient statistics during training
  live       DVCLive: the curves' latest point while a variant trains
  training   the training loop
  theory     the mean-field prediction of the gradients at initialisation
  probe      gradients, activations and the forward signal of saved weights on a probe batch
  tables     the tables' columns and the plots stage's checks of them
  figures    the report's figures
  report     plots/results.md
  vega       the offline page `dvc plots show` fills
  quickstart the README's main job: one `dvc exp run` of the five variants of the finding

Importing it has no side effects.
"""

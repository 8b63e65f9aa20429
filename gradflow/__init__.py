"""gradflow: why a deep plain CNN fails to train, measured layer by layer, and what fixes it.

The library behind the DVC stages in `stages/`. Read in this order:

  params     params.yaml parsed once into typed dataclasses; the resolved config of one run
  errors     the two mistakes a user can make: bad params (ParamsError), bad files (DataError)
  paths      every file the pipeline reads or writes, in one place
  files      atomic writes and checked reads
  data       sources (CIFAR-100, synthetic), the dataset file, batched augmentation
  model      the coursework's VGG family and the fixes as switches
  capture    per-layer gradient statistics
  training   the training loop
  probe      gradients and activations of saved weights on a fixed probe batch
  figures    the report's figures
  report     verdicts and plots/results.md

Importing it has no side effects.
"""

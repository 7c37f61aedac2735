"""Run infrastructure: training, evaluation, resume, distributed launch, checkpoints, callbacks,
the W&B logger and the printed report. Models, tasks and data know nothing of it."""

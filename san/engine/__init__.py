"""Training and evaluation without detectron2: trainer, optimizer and schedule, evaluator."""

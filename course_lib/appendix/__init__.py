"""The appendix notebooks (A1-A5): topics beside the main course path, one module per notebook.

- ``pretrain.py`` (A1): a tiny model pretrained from scratch, then instruction-tuned;
- ``continual.py`` (A2): teaching the persona new facts without forgetting the old ones;
- ``classify.py`` (A3): a classification head instead of generated labels;
- ``distill.py`` (A4): a smaller student taught by the persona model;
- ``fairness.py`` (A5): a counterfactual bias audit and a fairness penalty during fine-tuning
  (A5's red-teaming uses ``course_lib.serve.safety``).

Import the module you need (``from course_lib.appendix import pretrain``); nothing is imported
here, so that loading one appendix module does not load the others (distill.py imports torch).
"""

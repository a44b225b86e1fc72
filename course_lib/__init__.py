"""course_lib: the code behind the notebooks of the small-language-model fine-tuning course.

One module per course stage (env, data, batches, models, train, evaluate, ...), plus small shared
pieces (paths, report, runner). Notebooks import the stage they teach; nothing here imports a
notebook.
"""

__version__ = "0.1.0"

# Where the course is published; notebooks' "Open in Colab" badges and setup cells point here.
REPO = "slm-course/slm-finetuning-course"
COLAB_URL = "https://colab.research.google.com/github/" + REPO + "/blob/main/notebooks/{name}.ipynb"

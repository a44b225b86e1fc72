"""course_lib: the code behind the notebooks of the small-language-model fine-tuning course.

Read it from the bottom up. Small shared modules, which import nothing above them:
paths, versions, report, procmem (memory probes), ui (panels and tables), models (load a preset,
a hub id or a folder), runs (a saved training run: find it, read its settings, load it), runtimes
(PyTorch / ONNX Runtime / llama.cpp behind one interface), native (native code in a child process,
so its crash is an exception), batches, evaluate, env.
Then one module or folder per course stage, each importing only what lies below it:
data/ (01), train and compare (02), monitor/ (03), memory/ (00's planner), quantize/ (04),
serve/ (05). appendix/ holds the appendix notebooks' code and ops/ the maintainers' tools (the
notebook runner, the offline bundle); no core stage imports either. tests/test_layout.py keeps
this shape: no import cycles, no file over 500 lines.
"""

import logging as _logging

__version__ = "0.1.0"

# Importing peft imports bitsandbytes and (whenever it is installed) torchao, notebook 04's weight-only
# int8. On import, bitsandbytes logs "Failed to load CPU gemm_4bit_forward from kernels-community" (an
# optional kernel; 4-bit layers work without it), torchao that its CUDA-only kernels do not load, and
# torch that one of torchao's enums uses an older registration: all harmless, and printed in every
# notebook that imports peft. Quieted here, before any notebook's first import of peft.
for _name in ("bitsandbytes", "torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)

# Where the course is published; notebooks' "Open in Colab" badges and setup cells point here.
REPO = "slm-course/slm-finetuning-course"
COLAB_URL = "https://colab.research.google.com/github/" + REPO + "/blob/main/notebooks/{name}.ipynb"

"""Running and shipping the course as a whole, not one stage of it.

- ``runner.py``: every notebook through papermill (``make course``, the tests, ``course-run``);
- ``bundle.py``: the offline classroom bundle (``make bundle``, INSTRUCTORS.md);
- ``llama_build.py``: after ``make install`` builds llama-cpp-python, keep that build if it runs here,
  else rebuild it portable once.

All three are command lines: ``python -m course_lib.ops.runner``, ``python -m course_lib.ops.bundle build``,
``python -m course_lib.ops.llama_build``.
"""

"""``python -m course_lib.serve --model runs``: the server's command line (``course_lib.serve.app``)."""

from course_lib.serve.app import main

if __name__ == "__main__":
    raise SystemExit(main())

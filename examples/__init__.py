"""Runnable Looplane examples; a package so that ``-A examples.myapp.tasks`` imports."""

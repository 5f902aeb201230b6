"""The benchmark of console-auth against plain sqlite3: ``python -m bench``.

Lives outside the package so that no installed deployment ships it.
"""

"""Blind-mode share files (``appraise share buyer|seller``, ``appraise score``, ``POST /shares``): plain NPZ
arrays plus one JSON metadata string, never pickle. ``tables`` holds the format and the relevance-diversity
files; ``graphs`` the files of the ``graph`` method. This package sits above ``app.data`` (the NPZ reader) and
``app.valuation`` (the shares' dataclasses), so neither of those imports the other."""

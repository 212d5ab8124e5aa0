"""``python -m fastbn demo``: batch norm's headline results (Ioffe & Szegedy 2015, Fig. 1) with fastbn.

A 3-hidden-layer sigmoid network on handwritten digits, trained with and without ``fastbn.BatchNorm``:
``experiment`` runs the convergence comparison and a learning-rate sweep, ``nn`` holds the NumPy layers and
optimizers, ``data`` loads the digits, ``figures`` draws the plots and ``cli`` is the command. Only ``figures``,
``cli`` (when run) and ``data`` (for the built-in digits) need the optional extra: ``pip install 'fastbn[demo]'``.
"""

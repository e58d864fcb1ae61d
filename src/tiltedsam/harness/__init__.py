"""The experiment harness: data sets and models (``data``, ``models``), typed run configs
(``config``), one training run (``train``), checkpoints, grid sweeps in SQLite (``sweep``), reports
and plots (``report``) and the main comparison job (``compare``)."""
